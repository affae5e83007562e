"""Serving with Triton Inference Server (explicit model control); see docs/serving.md.

- ``config``: a model's serving options and the ``config.pbtxt`` they render (Triton's schema checks it)
- ``settings``: per-model serving settings (backend, options), stored once in the Airlock repository
- ``triton_repo``: generate the Triton model repository from the Airlock one (schema-checked configs)
- ``client``: stdlib V2 HTTP client (GRPC for model control when tritonclient is present)
- ``reload``: hot reload gated by the golden smoke test; ``golden``: golden records
- ``server``: run the nvidia-pytriton wheel's tritonserver (``supervise``: restart + restore);
  ``python_model``: the MiniLM embedding model and the DeepSeek-style generation model
- ``restore``: after a (re)start, serve each model's verified current version (else the previous good)
- ``auth``: the model-control credential (Triton's restricted APIs)
- ``haproxy``: HAProxy's runtime API, drain-swap and gradual weights
"""

from airlock.serving.client import InferResult, TritonClient
from airlock.serving.errors import EncryptedVersionError, ServingError, SmokeTestError
from airlock.serving.golden import golden_record, parse_golden
from airlock.serving.reload import Reloader, ReloadResult, smoke_test
from airlock.serving.settings import ModelOptions, SettingsStore, configure
from airlock.serving.triton_repo import TritonModel, generate

__all__ = ["EncryptedVersionError", "InferResult", "ModelOptions", "ReloadResult", "Reloader", "ServingError",
           "SettingsStore", "SmokeTestError", "TritonClient", "TritonModel", "configure", "generate",
           "golden_record", "parse_golden", "smoke_test"]
