"""A model's serving options and the Triton ``config.pbtxt`` they render (checked with Triton's own
``ModelConfig`` schema). Low-level: used by the stored serving settings (``settings``) and by the
Triton repository generation (``triton_repo``), importing neither."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airlock.errors import ManifestError

BACKENDS = ("python", "vllm", "tensorrtllm")


@dataclass(frozen=True)
class ModelOptions:
    """Per-model serving options. ``None`` = the backend's default (see ``tensor_parallel``, ``gpu_memory``).

    * ``instance_count``: model instances (python: CPU instances; vllm: engine instances; tensorrtllm:
      backend instances).
    * ``max_batch_size``: Triton's batch dimension (python, tensorrtllm; 0 = no batching); for vllm
      the engine's ``max_num_seqs`` (vLLM batches continuously inside the engine; Triton does not).
    * ``dynamic_batching`` / ``max_queue_delay_us``: Triton's dynamic batcher (python, tensorrtllm;
      needs ``max_batch_size`` > 0).
    * ``tensor_parallel_size``: vllm engine argument; tensorrtllm: recorded (a TensorRT engine's TP
      size is fixed when it is built; the config's ``airlock_tensor_parallel_size`` says what was meant).
    * ``gpu_memory_utilization``: vllm engine argument; tensorrtllm ``kv_cache_free_gpu_mem_fraction``.
    * ``task``: python backend only, ``embed`` (default; MiniLM embeddings) or ``generate`` (the
      DeepSeek-V3-style numpy LM, decoupled: tokens streamed over GRPC). vllm and tensorrtllm generate.
    """

    backend: str = "python"
    instance_count: int = 1
    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    task: str | None = None

    @property
    def generates(self) -> bool:
        """A decoupled model streaming tokens (the gate talks GRPC streaming to it)."""
        return self.backend != "python" or self.task == "generate"

    @property
    def gate(self) -> str:
        """How the smoke test talks to the model: ``infer`` (HTTP tensors), ``stream`` (GRPC token
        stream, the python generation model), ``vllm`` / ``tensorrtllm`` (GRPC text stream in that
        backend's text interface, given a text golden record; readiness only without one)."""
        if not self.generates:
            return "infer"
        return "stream" if self.backend == "python" else self.backend

    @property
    def tensor_parallel(self) -> int:
        return self.tensor_parallel_size or 1

    @property
    def gpu_memory(self) -> float:
        return self.gpu_memory_utilization if self.gpu_memory_utilization is not None else 0.90

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)



def _policy(versions: list[int]) -> str:
    return "version_policy: { specific: { versions: [" + ", ".join(str(v) for v in sorted(versions)) + "] } }"


def _batching(opts: ModelOptions) -> list[str]:
    if not opts.dynamic_batching:
        return []
    return [f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us} }}"]


def render_config(name: str, versions: list[int], opts: ModelOptions, *, hidden_size: int = 384) -> str:
    """config.pbtxt text for ``name`` serving exactly ``versions`` with the serving options ``opts``."""
    head = [f'name: "{name}"', f'backend: "{opts.backend}"', _policy(versions)]
    if opts.backend == "python" and opts.task == "generate":
        # the DeepSeek-style numpy LM (python_model/model.py): one token per streamed response
        body = [
            "max_batch_size: 0",
            "model_transaction_policy { decoupled: true }",
            'input [\n  { name: "INPUT_IDS" data_type: TYPE_INT64 dims: [ -1 ] },\n'
            '  { name: "MAX_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] optional: true }\n]',
            'output [\n  { name: "OUTPUT_IDS" data_type: TYPE_INT64 dims: [ 1 ] }\n]',
            f"instance_group [ {{ count: {opts.instance_count} kind: KIND_CPU }} ]",
        ]
    elif opts.backend == "python":
        # with max_batch_size > 0 Triton owns the first dimension: dims name the rest
        batch = "" if opts.max_batch_size else "-1, "
        body = [
            f"max_batch_size: {opts.max_batch_size}",
            f'input [\n  {{ name: "INPUT_IDS" data_type: TYPE_INT64 dims: [ {batch}-1 ] }},\n'
            f'  {{ name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: [ {batch}-1 ] optional: true }}\n]',
            f'output [\n  {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {batch}{hidden_size} ] }}\n]',
            f"instance_group [ {{ count: {opts.instance_count} kind: KIND_CPU }} ]",
            *_batching(opts),
        ]
    elif opts.backend == "vllm":
        # Triton's vLLM backend: inputs/outputs are auto-completed by the backend, batching happens in
        # the engine (max_num_seqs); engine arguments live in the version's model.json.
        body = [
            f"instance_group [ {{ count: {opts.instance_count} kind: KIND_MODEL }} ]",
            "model_transaction_policy { decoupled: true }",
        ]
    elif opts.backend == "tensorrtllm":
        body = [
            f"max_batch_size: {opts.max_batch_size or 64}",
            "model_transaction_policy { decoupled: true }",
            'input [\n  { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true },\n'
            '  { name: "input_lengths" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } },\n'
            '  { name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }\n]',
            'output [\n  { name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] },\n'
            '  { name: "sequence_length" data_type: TYPE_INT32 dims: [ -1 ] }\n]',
            f"instance_group [ {{ count: {opts.instance_count} kind: KIND_CPU }} ]",
            *_batching(opts),
            'parameters: { key: "gpt_model_type" value: { string_value: "inflight_fused_batching" } }',
            'parameters: { key: "gpt_model_path" value: { string_value: "${engine_dir}" } }',
            'parameters: { key: "batch_scheduler_policy" value: { string_value: "guaranteed_no_evict" } }',
        ]
        if opts.gpu_memory_utilization is not None:
            body.append('parameters: { key: "kv_cache_free_gpu_mem_fraction" value: { string_value: '
                        f'"{opts.gpu_memory_utilization:g}" }} }}')
        if opts.tensor_parallel_size is not None:
            body.append('parameters: { key: "airlock_tensor_parallel_size" value: { string_value: '
                        f'"{opts.tensor_parallel_size}" }} }}')
    else:
        raise ManifestError(f"{name}: unknown Triton backend {opts.backend!r} (known: {', '.join(BACKENDS)})",
                            rule="triton-config")
    meta = f'parameters: {{ key: "airlock_model" value: {{ string_value: "{name}" }} }}'
    return "\n".join([*head, *body, meta]) + "\n"


def vllm_engine_args(path: Path, opts: ModelOptions) -> dict[str, Any]:
    """The vLLM backend's model.json: engine arguments, the model being the immutable Airlock dir."""
    engine: dict[str, Any] = {"model": str(path), "disable_log_requests": True,
                              "gpu_memory_utilization": opts.gpu_memory,
                              "tensor_parallel_size": opts.tensor_parallel}
    if opts.max_batch_size:
        engine["max_num_seqs"] = opts.max_batch_size
    return engine


def validate_config(text: str, *, name: str, model_dir: Path | None = None) -> Any:
    """Parse ``text`` with Triton's ``ModelConfig`` schema; check name, backend and version dirs.

    Returns the parsed protobuf message. Raises ManifestError (rule ``triton-config``) naming the file.
    """
    where = str(model_dir / "config.pbtxt") if model_dir else f"{name}/config.pbtxt"
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:  # never write a config we could not check
        raise ManifestError(f"{where}: cannot validate: tritonclient[grpc] is not installed ({exc})",
                            path=where, rule="triton-config") from exc
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ManifestError(f"{where}: not a valid Triton ModelConfig: {exc}", path=where,
                            rule="triton-config") from exc
    if cfg.name != name:
        raise ManifestError(f"{where}: name {cfg.name!r} differs from the directory {name!r}", path=where,
                            rule="triton-config")
    if not cfg.backend and not cfg.platform:
        raise ManifestError(f"{where}: neither backend nor platform set", path=where, rule="triton-config")
    if model_dir is not None and cfg.version_policy.WhichOneof("policy_choice") == "specific":
        for v in cfg.version_policy.specific.versions:
            if not (model_dir / str(v)).is_dir():
                raise ManifestError(f"{where}: version_policy names version {v} but {model_dir / str(v)} "
                                    "does not exist", path=where, rule="triton-config")
    return cfg
