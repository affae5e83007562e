"""Hot reload with a golden smoke test: promote a new model version on a live Triton, or keep the old.

Flow for ``reload_model(model -> airlock_version)``:

1. Give the Airlock version a Triton version directory (``N``) in the model's entry.
2. **Candidate**: load ``N`` as a separate Triton model ``<model>__candidate`` beside the serving
   model and run the golden smoke test against it by explicit version. Client traffic never reaches
   an unverified version. Failure -> unload the candidate; the serving model was never touched.
3. **Promote**: config.pbtxt serves ``old + [N]``; load (Triton brings ``N`` up while the old versions
   keep answering), wait READY, smoke-test ``N`` inside the serving model again.
4. **Retire**: config.pbtxt serves ``[N]``; load (Triton unloads the old versions; poll until gone).

A failure in step 3 writes the old config back and reloads, so the old version keeps serving and the
result says ``failed``. Triton answers unversioned requests with the highest loaded version, so
from step 3 on they get the new (already verified) weights; versioned requests get what they ask.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airlock.errors import RepositoryError
from airlock.faults import fault_point
from airlock.serving.client import TEXT_DIALECTS, TritonClient, stream_generate, stream_text
from airlock.serving.errors import ServingError
from airlock.serving.golden import (
    DEFAULT_INPUT_IDS,
    DEFAULT_PROMPT,
    Golden,
    SmokeResult,
    compare,
    compare_text,
    parse_golden,
)
from airlock.serving.settings import SettingsStore
from airlock.serving.triton_repo import CANDIDATE_SUFFIX, TritonModel, model_lock

__all__ = ["CANDIDATE_SUFFIX", "ReloadResult", "Reloader", "model_lock", "smoke_test", "status"]


@dataclass
class ReloadResult:
    """What a reload did. ``status``: promoted | reconfigured (same version, new serving settings
    applied) | unchanged | failed."""

    model: str
    to_version: str
    status: str
    from_versions: list[str] = field(default_factory=list)
    triton_version: int | None = None
    smoke: dict[str, Any] | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("promoted", "reconfigured", "unchanged")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def smoke_test(client: TritonClient, model: str, version: int | str | None,
               golden: dict[str, Any] | Golden | None, *, gate: str = "infer") -> SmokeResult:
    """Run the golden record against ``model`` (pinned to ``version``); without one, a liveness check.

    ``gate`` (``ModelOptions.gate``): ``infer`` = HTTP tensors; ``stream`` = a generation model over
    GRPC streaming (a generation golden record, or any tokens for liveness); ``vllm`` / ``tensorrtllm``
    = a text golden record streamed over GRPC in that backend's text interface, readiness only
    without a record; ``ready`` = readiness only without a record. A Triton error while inferring is
    a failed smoke test (returned, not raised), except when Triton is unreachable: that is a
    ServingError, because nothing was learned about the model.
    """
    g = golden if isinstance(golden, Golden) or golden is None else parse_golden(golden)
    if g is not None and g.kind == "text":
        return _text_smoke(client, model, version, g, gate)
    if (g is not None and g.kind == "generation") or (g is None and gate == "stream"):
        return _stream_smoke(client, model, version, g)
    if g is None and gate in ("ready", *TEXT_DIALECTS):
        ok = client.model_ready(model, version)
        return SmokeResult(ok, 0.0, "no golden record: readiness only" if ok else "model not ready")
    inputs = g.inputs if g else {"INPUT_IDS": np.asarray(DEFAULT_INPUT_IDS, dtype=np.int64)}
    try:
        result = client.infer(model, inputs, version=version)
    except ServingError as exc:
        if exc.rule in ("triton-down", "triton-timeout"):
            raise
        return SmokeResult(False, float("inf"), f"inference failed: {exc}")
    if g is None:
        finite = all(np.all(np.isfinite(v)) for v in result.outputs.values() if v.dtype.kind == "f")
        ok = bool(result.outputs) and finite
        return SmokeResult(ok, 0.0, "no golden record: liveness only (outputs present and finite)" if ok
                           else "no golden record; outputs missing or not finite")
    return compare(g, result.outputs)


def _stream_smoke(client: TritonClient, model: str, version: int | str | None,
                  g: Golden | None) -> SmokeResult:
    if client.grpc_url is None:
        return SmokeResult(False, float("inf"),
                           "a generation model is gated over GRPC streaming: give --grpc-url")
    ids = [int(t) for t in g.inputs["INPUT_IDS"].reshape(-1)] if g else list(DEFAULT_PROMPT)
    r = stream_generate(client.grpc_url, model, ids, max_tokens=g.max_tokens if g else 4, version=version,
                        control_key=client.control_key, grpc_ca=client.grpc_ca)
    if r.error is not None:
        return SmokeResult(False, float("inf"), f"generation stream failed: {r.error}")
    if g is None:
        ok = bool(r.tokens)
        return SmokeResult(ok, 0.0, f"no golden record: liveness only ({len(r.tokens)} tokens streamed)" if ok
                           else "no tokens streamed")
    want = [int(t) for t in g.expected["OUTPUT_IDS"].reshape(-1)]
    if r.tokens == want:
        return SmokeResult(True, 0.0, f"greedy generation matches the golden record ({len(want)} tokens, "
                                      f"first token {r.ttft * 1000:.0f} ms)")
    first = next((i for i, (a, b) in enumerate(zip(r.tokens, want, strict=False)) if a != b),
                 min(len(r.tokens), len(want)))
    return SmokeResult(False, float("inf"), f"generated tokens differ from the golden record at "
                                            f"position {first}: got {r.tokens[:first + 3]}, "
                                            f"expected {want[:first + 3]}")


def _text_smoke(client: TritonClient, model: str, version: int | str | None, g: Golden,
                dialect: str) -> SmokeResult:
    """A text golden record streamed in the text interface of the model's backend (``dialect``)."""
    if dialect not in TEXT_DIALECTS:
        return SmokeResult(False, float("inf"), f"a text golden record needs a model served with a text "
                                                f"interface (backend {' or '.join(TEXT_DIALECTS)}); this "
                                                f"model's gate is {dialect!r}")
    if client.grpc_url is None:
        return SmokeResult(False, float("inf"), "a text generation model is gated over GRPC streaming: "
                                                "give --grpc-url")
    r = stream_text(client.grpc_url, model, g.prompt, dialect=dialect, max_tokens=g.max_tokens,
                    version=version, control_key=client.control_key, grpc_ca=client.grpc_ca)
    if r.error is not None:
        return SmokeResult(False, float("inf"), f"{dialect} text stream failed: {r.error}")
    return compare_text(g, r.text)


class Reloader:
    """Hot reload of models on one Triton server whose repository is ``triton_root``.

    Serving settings (backend, options) come from the Airlock root's SettingsStore: ``airlock_root``,
    or else the root the version directory lives in (``<root>/model_repo/<model>/<version>``).
    """

    def __init__(self, client: TritonClient, triton_root: Path, *, airlock_root: Path | None = None,
                 unload_timeout: float = 120.0) -> None:
        self.client = client
        self.root = triton_root
        self.airlock_root = airlock_root
        self.unload_timeout = unload_timeout

    def settings_root(self, model: str, path: Path) -> Path:
        if self.airlock_root is not None:
            return self.airlock_root
        if path.parent.name != model or path.parent.parent.name != "model_repo":
            raise RepositoryError(f"{path}: not <root>/model_repo/{model}/<version>; give the Airlock root "
                                  "(its serving settings say how to serve the model)", path=str(path))
        return path.parent.parent.parent

    def entry(self, model: str, path: Path) -> TritonModel:
        return TritonModel(self.root / model, SettingsStore(self.settings_root(model, path)).load(model))

    def loaded(self, model: str) -> list[int]:
        return sorted(int(v) for v, s in self.client.loaded_versions(model).items() if s == "READY" and v)

    def _switch(self, entry: TritonModel, versions: list[int]) -> None:
        entry.write_config(versions)
        fault_point("serving.reload.after_config")
        self.client.load(entry.name)

    # -- candidate --------------------------------------------------------------------------------
    def _candidate(self, entry: TritonModel, number: int) -> TritonModel:
        cand = TritonModel(self.root / (entry.name + CANDIDATE_SUFFIX), entry.options)
        self._drop_candidate(cand)
        cand.root.mkdir(parents=True)
        shutil.copytree(entry.root / str(number), cand.root / str(number), symlinks=True)
        cand.write_config([number], hidden_size=entry._hidden_size(number))
        return cand

    def _drop_candidate(self, cand: TritonModel) -> None:
        with contextlib.suppress(ServingError):
            if self.client.loaded_versions(cand.name):
                self.client.unload(cand.name, timeout=self.unload_timeout)
        if cand.root.exists():
            shutil.rmtree(cand.root)

    # -- the reload ---------------------------------------------------------------------------------
    def _locked(self, model: str) -> Any:
        return model_lock(self.root, model)

    def reload(self, model: str, airlock_version: str, path: Path,
               golden: dict[str, Any] | None = None) -> ReloadResult:
        """Bring ``airlock_version`` (immutable dir ``path``) into service, gated by ``golden``."""
        if model.endswith(CANDIDATE_SUFFIX):
            raise RepositoryError(f"{model}: names ending in {CANDIDATE_SUFFIX} are reserved for reload "
                                  "candidates", path=model)
        if not self.client.live():
            raise ServingError(f"Triton at {self.client.url} is not live; nothing changed",
                               path=self.client.url, rule="triton-down")
        with self._locked(model):
            return self._reload(model, airlock_version, path, golden)

    def _reload(self, model: str, airlock_version: str, path: Path,
                golden: dict[str, Any] | None) -> ReloadResult:
        t0 = time.monotonic()
        g = None if golden is None else parse_golden(golden, where=f"{model} {airlock_version} golden",
                                                     tokenizer=path / "tokenizer.json")
        entry = self.entry(model, path)
        old = [n for n in self.loaded(model) if n in entry.versions()]
        versions = entry.versions()
        res = ReloadResult(model, airlock_version, "failed",
                           from_versions=[versions[n].airlock_version for n in old if n in versions])
        number = entry.ensure_version(airlock_version, path)
        res.triton_version = number
        if old == [number]:
            reconfigured = entry.write_config([number])  # the serving settings changed since the load
            if reconfigured:
                t = time.monotonic()
                self.client.load(model)
                self.client.wait_ready(model, number, timeout=self.unload_timeout)
                res.seconds["reconfigure"] = time.monotonic() - t
            smoke = smoke_test(self.client, model, number, g, gate=entry.options.gate)
            res.smoke = smoke.as_dict()
            res.status = ("reconfigured" if reconfigured else "unchanged") if smoke.ok else "failed"
            res.error = None if smoke.ok else f"serving version fails its smoke test: {smoke.detail}"
            res.seconds["total"] = time.monotonic() - t0
            return res

        # 2. candidate beside the serving model
        cand = self._candidate(entry, number)
        try:
            t = time.monotonic()
            try:
                self.client.load(cand.name)
                self.client.wait_ready(cand.name, number, timeout=self.unload_timeout)
            except ServingError as exc:
                if exc.rule in ("triton-down", "triton-timeout"):
                    raise
                res.error = f"new version did not load: {exc}"
                return res
            res.seconds["candidate_load"] = time.monotonic() - t
            smoke = smoke_test(self.client, cand.name, number, g, gate=entry.options.gate)
            res.smoke = smoke.as_dict()
            fault_point("serving.reload.candidate_tested")
            if not smoke.ok:
                res.error = f"smoke test failed on {model} {airlock_version}: {smoke.detail}"
                return res
        finally:
            self._drop_candidate(cand)
            res.seconds["total"] = time.monotonic() - t0

        # 3. promote: new version next to the old ones in the serving model
        t = time.monotonic()
        try:
            self._switch(entry, sorted({*old, number}))
            self.client.wait_ready(model, number, timeout=self.unload_timeout)
            smoke = smoke_test(self.client, model, number, g, gate=entry.options.gate)
            res.smoke = smoke.as_dict()
            if not smoke.ok:
                raise ServingError(f"smoke test failed inside {model}: {smoke.detail}", rule="smoke-test")
        except ServingError as exc:
            res.error = f"promotion failed, old version kept: {exc}"
            if exc.rule in ("triton-down", "triton-timeout"):
                raise
            if old:
                self._switch(entry, old)
                self.client.wait_unloaded(model, versions=[str(number)], timeout=self.unload_timeout)
            else:
                with contextlib.suppress(ServingError):
                    self.client.unload(model, timeout=self.unload_timeout)
            return res
        res.seconds["promote"] = time.monotonic() - t

        # 4. retire the old versions
        t = time.monotonic()
        if old:
            self._switch(entry, [number])
            self.client.wait_unloaded(model, versions=[str(n) for n in old], timeout=self.unload_timeout)
        res.seconds["retire"] = time.monotonic() - t
        res.status = "promoted"
        res.seconds["total"] = time.monotonic() - t0
        return res


def status(client: TritonClient, triton_root: Path) -> dict[str, Any]:
    """Per model: Triton versions on disk (-> Airlock versions), configured and loaded versions."""
    out: dict[str, Any] = {"url": client.url, "live": client.live(), "models": {}}
    index = client.index() if out["live"] else []
    for d in sorted(p for p in triton_root.iterdir() if p.is_dir()) if triton_root.is_dir() else []:
        entry = TritonModel(d)
        if not entry.config_path.is_file():
            continue
        out["models"][d.name] = {
            "versions": {n: v.airlock_version for n, v in entry.versions().items()},
            "configured": entry.served(),
            "loaded": {e.version: e.state for e in index
                       if e.name == d.name and e.version and e.state not in (None, "UNAVAILABLE")},
        }
    return out
