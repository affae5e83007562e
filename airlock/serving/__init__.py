"""Serving with Triton Inference Server (explicit model control); see docs/serving.md.

- ``triton_repo``: generate the Triton model repository from the Airlock one (schema-checked configs)
- ``client``: stdlib V2 HTTP client (GRPC for model control when tritonclient is present)
- ``reload``: hot reload gated by the golden smoke test; ``golden``: golden records
- ``server``: run the nvidia-pytriton wheel's tritonserver; ``python_model``: the MiniLM model
"""

from airlock.serving.client import InferResult, TritonClient
from airlock.serving.errors import ServingError, SmokeTestError
from airlock.serving.golden import golden_record, parse_golden
from airlock.serving.reload import Reloader, ReloadResult, smoke_test
from airlock.serving.triton_repo import ModelOptions, TritonModel, generate

__all__ = ["InferResult", "ModelOptions", "ReloadResult", "Reloader", "ServingError", "SmokeTestError",
           "TritonClient", "TritonModel", "generate", "golden_record", "parse_golden", "smoke_test"]
