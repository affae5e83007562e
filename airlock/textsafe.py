"""Untrusted text (names from a stick, manifest fields, tar member names) made safe for a terminal.

Control characters (ESC, C1, newline, ...), bidi overrides and other invisible format characters are
shown as visible escapes (``\\x1b``, ``\\u202e``), and rich markup is escaped so ``[bold red]x`` or
``[/]`` prints as written. Human output only: ``--json`` carries the exact strings."""

from __future__ import annotations

import unicodedata

from rich.markup import escape

_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def visible(text: object, *, lines: bool = False) -> str:
    """``text`` with every control / format / surrogate character replaced by a visible escape
    (``lines``: newlines of a multi-line report Airlock composed are kept)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and s.isascii():
        return s
    out = []
    for ch in s:
        if lines and ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) in _INVISIBLE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def safe(text: object) -> str:
    """Ready for ``console.print(..., markup=True)``: escaped for the terminal and for rich markup."""
    return escape(visible(text))
