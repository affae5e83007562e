"""Loadability check before a version is renamed into place: every safetensors header parses, the
shard index agrees with the shards, and shapes/dtypes agree with ``config.json``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import TensorFormatError
from airlock.safetensors_io import (
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorInfo,
    parse_header,
    read_header,
)

if TYPE_CHECKING:
    from airlock.crypto import ProviderRegistry
    from airlock.crypto.format import FileIdentity

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(?:embed_tokens|word_embeddings|wte|tok_embeddings)\.weight$")
_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


@dataclass
class LoadReport:
    tensors: int = 0
    files: int = 0
    layers: int | None = None
    embedding: tuple[str, list[int]] | None = None
    checks: list[str] = field(default_factory=list)
    torch: bool = False
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "files": self.files, "layers": self.layers,
                "embedding": list(self.embedding) if self.embedding else None, "checks": self.checks,
                "torch": self.torch, "warnings": self.warnings}


def _fail(path: Path, msg: str, rule: str) -> TensorFormatError:
    return TensorFormatError(f"{path}: {msg}", path=str(path), rule=rule)


def _read_text(path: Path, keys: ProviderRegistry | None, identity: FileIdentity | None = None) -> str:
    if keys is None:
        return path.read_text()
    from airlock.crypto import open_decrypted

    with open_decrypted(path, keys, identity) as fh:
        return fh.read().decode()


def _header(path: Path, keys: ProviderRegistry | None,
            identity: FileIdentity | None = None) -> SafetensorsHeader:
    """The safetensors header, read through the decrypting reader when ``keys`` are given (only the
    chunks covering the header are decrypted)."""
    if keys is None:
        return read_header(path)
    import struct

    from airlock.crypto import open_decrypted

    p = str(path)
    with open_decrypted(path, keys, identity) as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _fail(path, f"plaintext is {size} bytes, shorter than the 8-byte prefix", "truncated")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _fail(path, f"header length {n} does not fit the {size}-byte plaintext", "header-size")
        raw_json = b""
        while len(raw_json) < n:  # a raw reader may return less than asked (chunk boundaries)
            part = fh.read(n - len(raw_json))
            if not part:
                raise _fail(path, "plaintext ends inside the header", "truncated")
            raw_json += part
    tensors, metadata = parse_header(raw_json, size - 8 - n, p)
    return SafetensorsHeader(p, n, prefix + raw_json, tensors, metadata, size)


def check_loadable(model_dir: Path, *, use_torch: bool = False,
                   keys: ProviderRegistry | None = None, model: str | None = None,
                   expected: dict[str, tuple[int, str]] | None = None) -> LoadReport:
    """Raise TensorFormatError naming the file and the rule on the first disagreement. ``keys``: the
    version is stored encrypted; headers and config are read through the decrypting reader and the
    torch check is skipped (it would need the plaintext on disk). ``model``: every encrypted file
    must be bound to this model and its relative path (a swapped ciphertext is refused);
    ``expected`` (the catalog's plaintext hashes): every encrypted file is decrypted in full and
    must match (an older version's ciphertext in a newer one's place is refused)."""
    from airlock.crypto.format import FileIdentity

    report = LoadReport()
    if keys is not None and expected is not None:
        _check_plaintext(model_dir, keys, model, expected)

    def ident(p: Path) -> FileIdentity | None:
        return FileIdentity(model, p.relative_to(model_dir).as_posix()) if model is not None else None

    shards = sorted(p for p in model_dir.rglob("*.safetensors") if p.is_file())
    # A checkpoint (its shards and index) lives in one directory, so a tensor name is unique per
    # directory; components in subdirectories (diffusers' unet/ and vae/) may reuse names.
    by_name: dict[str, TensorInfo] = {}
    where: dict[tuple[str, str], str] = {}  # (directory, tensor name) -> shard
    located: dict[str, set[str]] = {}  # tensor name -> every shard holding it
    for shard in shards:
        header = _header(shard, keys, ident(shard))  # validates offsets, dtypes, overlaps
        rel = shard.relative_to(model_dir).as_posix()
        folder = shard.parent.relative_to(model_dir).as_posix()
        for t in header.tensors:
            if (folder, t.name) in where:
                raise _fail(shard, f"tensor {t.name!r} also present in {where[folder, t.name]}",
                            "loadable-duplicate")
            by_name.setdefault(t.name, t)
            where[folder, t.name] = rel
            located.setdefault(t.name, set()).add(rel)
    report.files, report.tensors = len(shards), len(where)
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        try:
            weight_map = json.loads(_read_text(index_path, keys, ident(index_path)))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _fail(index_path, f"unreadable shard index ({exc})", "loadable-index") from exc
        for name, shard_rel in weight_map.items():
            if shard_rel not in located.get(name, ()):
                found = ", ".join(sorted(located.get(name, ()))) or "no shard"
                raise _fail(index_path, f"tensor {name!r} mapped to {shard_rel}, found in {found}",
                            "loadable-index")
        report.checks.append("index")
    config_path = model_dir / "config.json"
    if config_path.exists() and by_name:
        _check_config(config_path, by_name, report, keys, ident(config_path))
    if use_torch and shards and keys is not None:
        report.checks.append("torch-skipped-encrypted")
    elif use_torch and shards:
        _check_torch(shards, report)
    return report


def _check_plaintext(model_dir: Path, keys: ProviderRegistry, model: str | None,
                     expected: dict[str, tuple[int, str]]) -> None:
    """Every file's plaintext against the catalog's (size, sha256), authenticating every chunk."""
    from airlock.crypto import plaintext_sha256
    from airlock.crypto.errors import EncryptedFormatError
    from airlock.crypto.format import FileIdentity

    for rel, (size, sha) in sorted(expected.items()):
        p = model_dir / rel
        ident = FileIdentity(model, rel) if model is not None else None
        try:
            got = plaintext_sha256(p, keys, identity=ident)
        except (OSError, EncryptedFormatError) as exc:
            raise _fail(p, f"cannot be read as the recorded plaintext ({exc})", "loadable-plaintext") from exc
        if got != (size, sha):
            raise _fail(p, "plaintext differs from the catalog's hash (an older or other file's ciphertext)",
                        "loadable-plaintext")


def _check_config(config_path: Path, by_name: dict[str, TensorInfo], report: LoadReport,
                  keys: ProviderRegistry | None = None, identity: FileIdentity | None = None) -> None:
    try:
        cfg = json.loads(_read_text(config_path, keys, identity))
    except ValueError as exc:
        raise _fail(config_path, f"not JSON ({exc})", "loadable-config") from exc
    if not isinstance(cfg, dict):
        raise _fail(config_path, "not a JSON object", "loadable-config")
    cfg = {**cfg.get("text_config", {}), **cfg} if isinstance(cfg.get("text_config"), dict) else cfg
    hidden, vocab, layers = cfg.get("hidden_size"), cfg.get("vocab_size"), cfg.get("num_hidden_layers")
    embeds = [t for n, t in by_name.items() if _EMBED.search(n)]
    if isinstance(vocab, int) and isinstance(hidden, int):
        want = (vocab, hidden)
        if embeds:
            for t in embeds:
                if tuple(t.shape) != want:
                    raise _fail(config_path, f"embedding {t.name} has shape {list(t.shape)}, config says "
                                f"[vocab_size={vocab}, hidden_size={hidden}]", "loadable-shape")
        elif not any(tuple(t.shape) == want for t in by_name.values()):
            raise _fail(config_path, f"no tensor of shape [vocab_size={vocab}, hidden_size={hidden}]",
                        "loadable-shape")
        report.checks.append("embedding")
    elif isinstance(hidden, int) and embeds and embeds[0].shape[-1] != hidden:
        raise _fail(config_path, f"embedding {embeds[0].name} width {embeds[0].shape[-1]} != hidden_size "
                    f"{hidden}", "loadable-shape")
    if embeds:
        report.embedding = (embeds[0].name, list(embeds[0].shape))
    indices = {int(m.group(1)) for n in by_name if (m := _LAYER.search(n))}
    if indices:
        report.layers = max(indices) + 1
        if isinstance(layers, int):
            if indices != set(range(layers)):
                raise _fail(config_path, f"tensors name {len(indices)} layers (max index {max(indices)}), "
                            f"config num_hidden_layers={layers}", "loadable-layers")
            report.checks.append("layers")
    torch_dtype = cfg.get("torch_dtype")
    want_dtype = _TORCH_DTYPES.get(torch_dtype) if isinstance(torch_dtype, str) else None
    if want_dtype and embeds and embeds[0].dtype != want_dtype:
        # loaders cast to torch_dtype, so this is legal (e.g. a bf16 export of an fp32 config): a warning
        report.warnings.append(f"embedding {embeds[0].name} is {embeds[0].dtype}, config torch_dtype is "
                               f"{torch_dtype}")
    elif want_dtype:
        report.checks.append("dtype")


def _check_torch(shards: list[Path], report: LoadReport) -> None:
    """Open every shard with safetensors' torch API and read shape and dtype of each tensor slice
    (no tensor data is materialised, so memory stays bounded)."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors is a core dependency
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        report.checks.append("torch-unavailable")
        return
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt", device="cpu") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    sl = fh.get_slice(name)
                    sl.get_shape()
                    sl.get_dtype()
        except Exception as exc:
            raise _fail(shard, f"torch cannot open it ({exc})", "loadable-torch") from exc
    report.torch = True
    report.checks.append("torch")
