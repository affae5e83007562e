"""Per-model serving settings (backend and its options), stored once in the Airlock repository.

One JSON file per model, written atomically::

    <root>/model_repo/metadata/serving/<model>.json
    {"format": 1, "model": "ds", "backend": "vllm", "instance_count": 1, "max_batch_size": 0,
     "dynamic_batching": false, "max_queue_delay_us": 0, "tensor_parallel_size": 8,
     "gpu_memory_utilization": 0.85}

Why a file and not a catalog table: the catalog is an index of installed versions that is
cross-checked against signed data and rebuilt from it (docs/repository.md, "Verify"); serving settings are
operator configuration that no signed manifest carries and that must survive a catalog rebuild.
A small file per model is written atomically, diffed and backed up with the repository, and read by
every path that writes ``config.pbtxt`` (``serve generate``, ``serve reload``, the roles' sync and
``playbooks/rollback.yml``), so a model configured for vLLM stays a vLLM model whatever moves it.

Settings are set by ``airlock serve configure`` (flags merge into what is stored; ``--settings``
replaces it, which is what ``roles/triton_models`` does with ``triton_models_serving``). A model
without a file is served with the defaults (python backend, one instance, no batching). Every write
is checked twice: the values (ranges, which option applies to which backend), and the
``config.pbtxt`` they render, parsed with Triton's own schema (``model_config_pb2``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from airlock.errors import ManifestError, RepositoryError
from airlock.fsutil import atomic_write_bytes
from airlock.serving.config import BACKENDS, ModelOptions, render_config, validate_config

FORMAT = 1
SETTINGS_DIR = Path("model_repo") / "metadata" / "serving"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RULE = "serving-settings"


OPTION_NAMES = tuple(f.name for f in fields(ModelOptions))


def _bad(where: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {message}", path=where, rule=RULE)


def check_model_name(name: str) -> str:
    """Model names become file and directory names: refuse anything else, before touching a file."""
    if not _NAME.match(name) or name in ("metadata", "update_packages") or name.endswith("__candidate"):
        raise _bad(name, "not a servable model name (letters, digits, '.', '_', '-'; not 'metadata', "
                         "'update_packages' or a reserved '__candidate' name)")
    return name


def _int(where: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(where, f"{key} must be an integer >= {low}, not {value!r}")
    return value


def options_from(data: dict[str, Any], *, where: str, base: ModelOptions | None = None) -> ModelOptions:
    """ModelOptions from a JSON object (unknown keys refused), over ``base`` (default: the defaults);
    checked by ``check_options``."""
    if not isinstance(data, dict):
        raise _bad(where, "serving settings must be a JSON object")
    unknown = sorted(set(data) - set(OPTION_NAMES) - {"format", "model"})
    if unknown:
        raise _bad(where, f"unknown serving option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(OPTION_NAMES)})")
    values = {k: v for k, v in data.items() if k in OPTION_NAMES}
    return check_options(replace(base or ModelOptions(), **values), where=where)


def check_options(opts: ModelOptions, *, where: str) -> ModelOptions:
    """Values in range and applicable to the backend; the rendered config.pbtxt parses with Triton's
    schema. ManifestError (exit 11, rule ``serving-settings``) naming the first problem."""
    if opts.backend not in BACKENDS:
        raise _bad(where, f"unknown Triton backend {opts.backend!r} (known: {', '.join(BACKENDS)})")
    _int(where, "instance_count", opts.instance_count, 1)
    _int(where, "max_batch_size", opts.max_batch_size, 0)
    _int(where, "max_queue_delay_us", opts.max_queue_delay_us, 0)
    if not isinstance(opts.dynamic_batching, bool):
        raise _bad(where, f"dynamic_batching must be true or false, not {opts.dynamic_batching!r}")
    if opts.tensor_parallel_size is not None:
        _int(where, "tensor_parallel_size", opts.tensor_parallel_size, 1)
    gpu = opts.gpu_memory_utilization
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int | float)
                            or not math.isfinite(gpu) or not 0 < gpu <= 1):
        raise _bad(where, f"gpu_memory_utilization must be a number in (0, 1], not {gpu!r}")
    if opts.backend == "python" and (opts.tensor_parallel_size not in (None, 1) or gpu is not None):
        raise _bad(where, "tensor_parallel_size and gpu_memory_utilization apply to the vllm and "
                          "tensorrtllm backends, not python")
    if opts.backend == "vllm" and (opts.dynamic_batching or opts.max_queue_delay_us):
        raise _bad(where, "the vllm backend batches continuously inside the engine: dynamic_batching and "
                          "max_queue_delay_us do not apply (max_batch_size sets the engine's max_num_seqs)")
    if opts.task not in (None, "embed", "generate") or (opts.backend != "python" and opts.task == "embed"):
        raise _bad(where, "task must be embed or generate (python backend; vllm and tensorrtllm "
                          f"generate), not {opts.task!r}")
    batching = opts.max_batch_size or opts.dynamic_batching
    if opts.task == "generate" and opts.backend == "python" and batching:
        raise _bad(where, "the python generation model streams one request at a time: max_batch_size 0, "
                          "no dynamic batching")
    if (opts.dynamic_batching or opts.max_queue_delay_us) and opts.max_batch_size == 0:
        raise _bad(where, "dynamic batching needs max_batch_size > 0 (Triton batches along that dimension)")
    if opts.max_queue_delay_us and not opts.dynamic_batching:
        raise _bad(where, "max_queue_delay_us is a dynamic batching option: set dynamic_batching too")
    validate_config(render_config("settings_check", [1], opts), name="settings_check")
    return opts


@dataclass(frozen=True)
class SettingsStore:
    """The serving settings of one Airlock root."""

    root: Path  # the Airlock root (holds model_repo/)

    @property
    def directory(self) -> Path:
        return self.root / SETTINGS_DIR

    def path(self, model: str) -> Path:
        return self.directory / f"{check_model_name(model)}.json"

    def stored(self, model: str) -> ModelOptions | None:
        """What is stored for ``model``, or None when nothing is."""
        path = self.path(model)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RepositoryError(f"{path}: cannot read serving settings: {exc.strerror}", path=str(path),
                                  rule=RULE) from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise _bad(str(path), f"not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("model") != model:
            raise _bad(str(path), f"expected {{\"format\": {FORMAT}, \"model\": \"{model}\", ...}}")
        return options_from(data, where=str(path))

    def load(self, model: str) -> ModelOptions:
        """The settings ``model`` is served with (the defaults when none are stored)."""
        return self.stored(model) or ModelOptions()

    def write(self, model: str, opts: ModelOptions) -> None:
        check_options(opts, where=str(self.path(model)))
        body = {"format": FORMAT, "model": model, **opts.as_dict()}
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # metadata/ is private
        self.directory.mkdir(mode=0o700, exist_ok=True)
        atomic_write_bytes(self.path(model), (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


@dataclass
class ConfigureReport:
    model: str
    path: str
    changed: bool
    before: dict[str, Any] | None
    after: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "path": self.path, "changed": self.changed, "before": self.before,
                "settings": self.after}


def configure(root: Path, model: str, changes: dict[str, Any], *, replace_all: bool = False,
              check: bool = False) -> ConfigureReport:
    """Store ``model``'s serving settings: ``changes`` merged into what is stored (``replace_all``:
    over the defaults instead). Validated before anything is written; ``check`` writes nothing."""
    store = SettingsStore(root)
    path = store.path(model)
    model_dir = root / "model_repo" / model
    if not model_dir.is_dir():
        raise RepositoryError(f"{model_dir}: no such model in the Airlock repository", path=str(model_dir))
    before = store.stored(model)
    base = ModelOptions() if replace_all or before is None else before
    after = options_from(changes, where=str(path), base=base)
    changed = before != after
    if changed and not check:
        store.write(model, after)
    return ConfigureReport(model, str(path), changed, None if before is None else before.as_dict(),
                           after.as_dict())
