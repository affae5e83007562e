"""JSON from untrusted bytes with bounds: nesting depth (checked by a scan before parsing: the json
module recurses once per level, so 100k levels would be a RecursionError), integers of at most 19
digits within the signed 64-bit range, finite numbers only (``NaN``, ``Infinity``, ``1e999``), strict
UTF-8. Used by the bundle manifest and the safetensors header; the caller turns a refusal into its own
error class with ``fail(message, kind)``, kind ``"parse"`` (not JSON) or ``"bounds"``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

MAX_INT_DIGITS = 19
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

Fail = Callable[[str, str], Exception]
# a JSON string (unrolled: a run of plain bytes, then escape + run, ...) or one bracket
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def check_depth(data: bytes, limit: int) -> str | None:
    """Why ``data`` nests deeper than ``limit`` (strings skipped, brackets counted), or None."""
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(data):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return f"nested deeper than {limit} levels"
        elif c in (b"]", b"}"):
            depth -= 1
    return None


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused(f"integer {text} outside the signed 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"non-finite number {text[:40]} not allowed")
    return value


def _bad_constant(name: str) -> Any:
    raise _Refused(f"non-finite number {name} not allowed")


def loads(data: bytes, *, max_depth: int, fail: Fail,
          object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise fail(f"not valid UTF-8 ({exc.reason})", "parse") from exc
    why = check_depth(data, max_depth)
    if why:
        raise fail(why, "bounds")
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_constant=_bad_constant,
                          parse_int=_parse_int, parse_float=_parse_float)
    except _Refused as exc:
        raise fail(str(exc), "bounds") from exc
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON ({exc.msg} at line {exc.lineno})", "parse") from exc
    except ValueError as exc:  # a caller's object_pairs_hook (e.g. a duplicate key)
        raise fail(str(exc), "parse") from exc
    except RecursionError as exc:  # not reached after check_depth; a backstop
        raise fail("nested too deeply", "bounds") from exc
