"""Golden smoke test records: fixed inputs, expected outputs and a tolerance.

A record is plain JSON so it can ride signed in the bundle manifest (``ModelEntry.golden``). What
``golden_record`` writes satisfies the bundle spec (``input``, ``expected``, ``tolerance``)::

    {"input": {"INPUT_IDS": [[101, 7592, 2088, 102]]},
     "expected": {"EMBEDDING": [[-0.0344, ...]]},
     "tolerance": 1e-4, "rtol": 1e-3}

``parse_golden`` also reads ``inputs``/``atol`` and the short forms (see its docstring).

Integer inputs are sent as INT64, float inputs and outputs as FP32. ``golden_record`` computes a
record for a model directory with the very forward pass the Triton python model runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from airlock.errors import ManifestError

# "hello world" and "the model repository is immutable." tokenized by the model's tokenizer.json
# ([CLS] ... [SEP], padded with [PAD]=0): two lengths exercise the attention mask.
DEFAULT_INPUT_IDS = [[101, 7592, 2088, 102, 0, 0, 0, 0, 0, 0],
                     [101, 1996, 2944, 22409, 2003, 10047, 28120, 3085, 1012, 102]]
DEFAULT_PROMPT = (0, 17, 300, 42, 7, 99)  # liveness prompt of a generation model without a golden record
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    atol: float
    rtol: float
    kind: str = "tensors"  # or "generation": INPUT_IDS prompt, expected greedy OUTPUT_IDS, streamed;
    #                        or "text": prompt text -> expected greedy text (vLLM / TensorRT-LLM dialects)
    max_tokens: int = 0
    prompt: str = ""
    text: str = ""  # the expected text ("text" records)
    match: str = "exact"  # "text" records: exact | normalised (NFC, whitespace runs -> one space, stripped)


@dataclass(frozen=True)
class SmokeResult:
    """Outcome of comparing one inference with a golden record."""

    ok: bool
    max_abs_err: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs_err": self.max_abs_err, "detail": self.detail}


def _array(name: str, value: Any, *, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{where}: golden {name} is not a rectangular array: {exc}", path=where,
                            rule="golden") from exc
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    raise ManifestError(f"{where}: golden {name} must hold numbers, not {arr.dtype}", path=where,
                        rule="golden")


def _text_ids(text: list[str], tokenizer: Path | None, where: str) -> list[list[int]]:
    """Token ids for a text input, with the model version's own tokenizer.json."""
    if tokenizer is None or not tokenizer.is_file():
        raise ManifestError(f"{where}: golden input is text but the model has no tokenizer.json; "
                            "give token ids instead", path=where, rule="golden")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ManifestError(f"{where}: golden input is text and the tokenizers package is not installed; "
                            "give token ids instead", path=where, rule="golden") from exc
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return [list(e.ids) for e in tok.encode_batch(text)]


def parse_golden(record: dict[str, Any], *, where: str = "golden", tokenizer: Path | None = None) -> Golden:
    """Validate a golden record (from a manifest or a file); ManifestError on anything malformed.

    Two spellings are accepted: ``inputs``/``expected``/``atol``/``rtol`` (objects keyed by tensor
    name), and the bundle spec's ``input``/``expected``/``tolerance`` where ``input`` may also be
    token ids (-> INPUT_IDS) or text (tokenized with ``tokenizer``, the model's tokenizer.json),
    ``expected`` a bare array (-> EMBEDDING), and ``tolerance`` the absolute tolerance (rtol 0).
    """
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: golden must be an object", path=where, rule="golden")
    if record.get("kind") == "generation":
        return _parse_generation(record, where)
    if record.get("kind") == "text":
        return _parse_text(record, where)
    raw_in = record.get("inputs", record.get("input"))
    raw_out = record.get("expected")
    missing = [k for k, v in (("inputs", raw_in), ("expected", raw_out))
               if v is None or (isinstance(v, dict | list | str) and not v)]
    if missing:
        raise ManifestError(f"{where}: golden lacks {', '.join(missing)}", path=where, rule="golden")
    if isinstance(raw_in, str) or (isinstance(raw_in, list) and all(isinstance(x, str) for x in raw_in)):
        raw_in = {"INPUT_IDS": _text_ids([raw_in] if isinstance(raw_in, str) else raw_in, tokenizer, where)}
    elif not isinstance(raw_in, dict):
        raw_in = {"INPUT_IDS": raw_in}
    if not isinstance(raw_out, dict):
        raw_out = {"EMBEDDING": raw_out}
    try:
        raw_atol: Any = record["atol"] if "atol" in record else record.get("tolerance", DEFAULT_ATOL)
        raw_rtol: Any = record.get("rtol", 0.0 if "tolerance" in record else DEFAULT_RTOL)
        atol, rtol = float(raw_atol), float(raw_rtol)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: golden atol/rtol must be numbers", path=where, rule="golden") from exc
    if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
        raise ManifestError(f"{where}: golden atol/rtol must be finite and >= 0", path=where, rule="golden")
    inputs = {k: _array(k, v, where=where) for k, v in raw_in.items()}
    inputs = {k: (v[None, :] if v.ndim == 1 else v) for k, v in inputs.items()}
    expected = {k: _array(k, v, where=where) for k, v in raw_out.items()}
    expected = {k: (v[None, :] if v.ndim == 1 else v) for k, v in expected.items()}
    return Golden(inputs, expected, atol, rtol)


def _parse_generation(record: dict[str, Any], where: str) -> Golden:
    """``{"kind": "generation", "input": {"INPUT_IDS": [...]}, "expected": {"OUTPUT_IDS": [...]},
    "max_tokens": N, "tolerance": 0}``: the greedy token ids the model must stream for the prompt."""
    raw_in, raw_out = record.get("input", record.get("inputs")), record.get("expected")
    ids = raw_in.get("INPUT_IDS") if isinstance(raw_in, dict) else raw_in
    want = raw_out.get("OUTPUT_IDS") if isinstance(raw_out, dict) else raw_out
    for name, value in (("input INPUT_IDS", ids), ("expected OUTPUT_IDS", want)):
        if not isinstance(value, list) or not value or not all(isinstance(t, int) and not isinstance(t, bool)
                                                               and 0 <= t < 2**31 for t in value):
            raise ManifestError(f"{where}: generation golden {name} must be a non-empty list of token ids",
                                path=where, rule="golden")
    assert isinstance(ids, list) and isinstance(want, list)
    max_tokens = record.get("max_tokens", len(want))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not len(want) <= max_tokens <= 4096:
        raise ManifestError(f"{where}: generation golden max_tokens must be an integer from "
                            f"{len(want)} to 4096", path=where, rule="golden")
    return Golden({"INPUT_IDS": np.asarray(ids, dtype=np.int64)},
                  {"OUTPUT_IDS": np.asarray(want, dtype=np.int64)}, 0.0, 0.0, kind="generation",
                  max_tokens=max_tokens)


TEXT_MATCHES = ("exact", "normalised")


def _parse_text(record: dict[str, Any], where: str) -> Golden:
    """``{"kind": "text", "prompt": "...", "expected": "...", "max_tokens": N, "match": "exact"}``: the
    greedy text a vLLM / TensorRT-LLM model (Triton's text interface) must stream for the prompt."""
    prompt, want = record.get("prompt"), record.get("expected")
    for name, value in (("prompt", prompt), ("expected", want)):
        if not isinstance(value, str) or not value:
            raise ManifestError(f"{where}: text golden {name} must be a non-empty string", path=where,
                                rule="golden")
    max_tokens = record.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
        raise ManifestError(f"{where}: text golden max_tokens must be an integer from 1 to 4096", path=where,
                            rule="golden")
    match = record.get("match", "exact")
    if match not in TEXT_MATCHES:
        raise ManifestError(f"{where}: text golden match must be one of {', '.join(TEXT_MATCHES)}, "
                            f"not {match!r}", path=where, rule="golden")
    assert isinstance(prompt, str) and isinstance(want, str)
    return Golden({}, {}, 0.0, 0.0, kind="text", max_tokens=max_tokens, prompt=prompt, text=want, match=match)


def normalise_text(text: str) -> str:
    """The ``normalised`` comparison: Unicode NFC, every whitespace run one space, ends stripped."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFC", text).split())


def compare_text(golden: Golden, got: str) -> SmokeResult:
    """A streamed text against a text golden record (``exact`` or ``normalised``)."""
    a, b = (got, golden.text) if golden.match == "exact" else (normalise_text(got),
                                                               normalise_text(golden.text))
    if a == b:
        return SmokeResult(True, 0.0, f"greedy text matches the golden record ({golden.match}, "
                                      f"{len(b)} chars)")
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return SmokeResult(False, float("inf"), f"generated text differs from the golden record ({golden.match}) "
                                            f"at character {first}: got {a[first:first + 40]!r}, "
                                            f"expected {b[first:first + 40]!r}")


def text_record(model_dir: Path, prompt: str, max_tokens: int = 8, *, match: str = "exact") -> dict[str, Any]:
    """The text golden record of a DeepSeek-style model directory whose tokenizer.json is WordLevel
    (the test models): the server's own forward pass and tokenizer (``python_model``), greedy. For a
    real vLLM / TensorRT-LLM model, record it from a known-good server instead (``record_text``)."""
    from airlock.serving.python_model.model import DeepSeekLM, WordCodec

    where = str(model_dir)
    try:
        codec = WordCodec(str(model_dir / "tokenizer.json"))
        tokens = list(DeepSeekLM(str(model_dir)).generate(codec.encode(prompt), max_tokens))
    except (OSError, ValueError, KeyError) as exc:
        raise ManifestError(f"{where}: cannot compute a text record here ({exc}); record it from a "
                            "known-good server (airlock serve golden --prompt ... --grpc-url)", path=where,
                            rule="golden") from exc
    record = {"kind": "text", "prompt": prompt, "expected": codec.decode(tokens), "max_tokens": max_tokens,
              "match": match}
    _parse_text(record, where)
    return record


def record_text(grpc_url: str, model: str, prompt: str, *, backend: str, max_tokens: int = 8,
                match: str = "exact", version: int | str | None = None, control_key: str | None = None,
                grpc_ca: str | None = None) -> dict[str, Any]:
    """The text golden record of a model served by a known-good Triton (a GPU host with vLLM or
    TensorRT-LLM), asked through the very request and stream assembly the gate uses."""
    from airlock.serving.client import stream_text
    from airlock.serving.errors import ServingError

    r = stream_text(grpc_url, model, prompt, dialect=backend, max_tokens=max_tokens, version=version,
                    control_key=control_key, grpc_ca=grpc_ca)
    if r.error is not None or not r.text:
        raise ServingError(f"{model}: cannot record a text golden: {r.error or 'no text streamed'}",
                           path=model, rule="golden")
    record = {"kind": "text", "prompt": prompt, "expected": r.text, "max_tokens": max_tokens, "match": match}
    _parse_text(record, model)
    return record


def generation_record(model_dir: Path, input_ids: list[int], max_tokens: int = 8) -> dict[str, Any]:
    """The golden generation record of a DeepSeek-style model directory (the server's own forward
    pass, greedy), in the bundle spec's shape (``input``, ``expected``, ``tolerance``)."""
    from airlock.serving.python_model.model import DeepSeekLM

    tokens = list(DeepSeekLM(str(model_dir)).generate(input_ids, max_tokens))
    return {"kind": "generation", "input": {"INPUT_IDS": list(input_ids)}, "expected": {"OUTPUT_IDS": tokens},
            "max_tokens": max_tokens, "tolerance": 0}


def compare(golden: Golden, outputs: dict[str, np.ndarray]) -> SmokeResult:
    """Every expected output present, same shape, and within atol + rtol * |expected|."""
    worst = 0.0
    for name, want in golden.expected.items():
        got = outputs.get(name)
        if got is None:
            return SmokeResult(False, math.inf, f"output {name} missing from the response")
        if got.shape != want.shape:
            return SmokeResult(False, math.inf, f"output {name} has shape {list(got.shape)}, "
                                                f"expected {list(want.shape)}")
        if not np.all(np.isfinite(got)):
            return SmokeResult(False, math.inf, f"output {name} contains NaN or Inf")
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = max(worst, float(err.max(initial=0.0)))
        if not np.allclose(got, want, atol=golden.atol, rtol=golden.rtol):
            return SmokeResult(False, worst, f"output {name} differs from the golden output by up to "
                                             f"{worst:.3g} (atol {golden.atol:g}, rtol {golden.rtol:g})")
    return SmokeResult(True, worst, f"{len(golden.expected)} output(s) within atol {golden.atol:g}, "
                                    f"rtol {golden.rtol:g} (max abs err {worst:.3g})")


def golden_record(model_dir: Path, input_ids: list[list[int]] | None = None, *,
                  atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """The golden record of a MiniLM-shaped model directory, for bundle builders to embed."""
    from airlock.serving.python_model.model import MiniLM

    ids = np.asarray(input_ids if input_ids is not None else DEFAULT_INPUT_IDS, dtype=np.int64)
    emb = MiniLM(str(model_dir)).embed(ids)
    return {"input": {"INPUT_IDS": ids.tolist()},
            "expected": {"EMBEDDING": [[float(x) for x in row] for row in emb]},
            "tolerance": atol, "rtol": rtol}
