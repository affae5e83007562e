"""Stand-in for Triton's vLLM backend and TensorRT-LLM's ensemble, for tests on a host without a GPU.

The real backends need a GPU, so the tests serve the tiny DeepSeek-V3-style numpy LM
(``airlock/serving/python_model/model.py``, copied next to this file as ``deepseek_lm.py``) behind the
exact text I/O contract of each:

* **vLLM** (triton-inference-server/vllm_backend ``src/model.py`` and ``src/utils/request.py``):
  installed as a *Python-based backend* named ``vllm`` (``<backend dir>/vllm/model.py``), so the
  ``config.pbtxt`` Airlock writes for a vLLM model (``backend: "vllm"``, no I/O listed, decoupled) and
  the version's ``model.json`` (engine arguments, ``"model"`` = the weights) are used unchanged.
  ``auto_complete_config`` adds what the real backend adds: inputs ``text_input`` TYPE_STRING [1],
  ``stream`` / ``exclude_input_in_output`` TYPE_BOOL [1] (optional), ``sampling_parameters``
  TYPE_STRING [1] (optional, JSON), output ``text_output`` TYPE_STRING [-1]; decoupled, max_batch_size 0.
  Semantics kept: ``stream`` true -> one response per step carrying the new text only, the last one
  with the final flag; streaming with ``exclude_input_in_output`` false is an error; not streaming ->
  one final response with the whole text, the prompt prepended unless excluded; ``max_tokens``
  defaults to 16 (vLLM's SamplingParams).
* **TensorRT-LLM** (tensorrtllm_backend ``all_models/inflight_batcher_llm/ensemble/config.pbtxt``): a
  python model whose config lists the ensemble's inputs (``text_input`` TYPE_STRING [1], ``max_tokens``
  TYPE_INT32 [1], optional ``stream``, ``exclude_input_in_output``, ``top_k``, ``temperature``...) with
  a batch dimension (max_batch_size > 0) and output ``text_output`` TYPE_STRING [-1]; the weights are
  named by the ``gpt_model_path`` parameter.

The dialect is chosen from the model's own config: an input named ``max_tokens`` = TensorRT-LLM.
Only greedy decoding is implemented: a request asking to sample is refused, never answered wrongly.
Runs inside the Triton stub: standard library and numpy only.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deepseek_lm import DeepSeekLM, WordCodec  # copied next to this file by the tests

VLLM_INPUTS = [
    {"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]},
    {"name": "stream", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
    {"name": "sampling_parameters", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
    {"name": "exclude_input_in_output", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
]
VLLM_OUTPUTS = [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}]


def _scalar(request: Any, name: str, pb_utils: Any, default: Any) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        config = auto_complete_model_config.as_dict()
        if any(i["name"] == "max_tokens" for i in config.get("input", [])):
            return auto_complete_model_config  # the TensorRT-LLM ensemble dialect lists its own I/O
        have_in = {i["name"] for i in config.get("input", [])}
        have_out = {o["name"] for o in config.get("output", [])}
        for spec in VLLM_INPUTS:
            if spec["name"] not in have_in:
                auto_complete_model_config.add_input(spec)
        for spec in VLLM_OUTPUTS:
            if spec["name"] not in have_out:
                auto_complete_model_config.add_output(spec)
        auto_complete_model_config.set_model_transaction_policy(dict(decoupled=True))
        auto_complete_model_config.set_max_batch_size(0)
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(config), \
            "the text backends must be configured with the decoupled model transaction policy"
        self.trtllm = any(i["name"] == "max_tokens" for i in config.get("input", []))
        if self.trtllm:
            path = config["parameters"]["gpt_model_path"]["string_value"]
        else:  # vLLM: engine arguments in the version directory's model.json
            version_dir = os.path.join(args["model_repository"], args["model_version"])
            with open(os.path.join(version_dir, "model.json"), encoding="utf-8") as fh:
                path = json.load(fh)["model"]
        self.llm = DeepSeekLM(path)
        self.codec = WordCodec(os.path.join(path, "tokenizer.json"))
        self.out_dtype = np.object_
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _params(self, request: Any, pb_utils: Any) -> tuple[str, bool, bool, int]:
        """prompt, stream, prepend_input, max_tokens in the model's dialect (greedy only)."""
        prompt = _scalar(request, "text_input", pb_utils, b"").decode("utf-8")
        stream = bool(_scalar(request, "stream", pb_utils, False))
        exclude = pb_utils.get_input_tensor_by_name(request, "exclude_input_in_output")
        if self.trtllm:
            max_tokens = int(_scalar(request, "max_tokens", pb_utils, 0))
            top_k = int(_scalar(request, "top_k", pb_utils, 1))
            if top_k > 1:
                raise ValueError("this stand-in decodes greedily only: top_k must be 0 or 1")
            prepend = not stream and (exclude is None or not bool(exclude.as_numpy().reshape(-1)[0]))
            return prompt, stream, prepend, max_tokens
        # vLLM (src/utils/request.py): exclude_input_in_output default False, but False when streaming
        prepend = not bool(exclude.as_numpy().reshape(-1)[0]) if exclude is not None else not stream
        if prepend and stream:
            raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
        raw = _scalar(request, "sampling_parameters", pb_utils, b"{}")
        params = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        if float(params.get("temperature", 1.0)) != 0.0 and int(params.get("top_k", -1)) != 1:
            raise ValueError("this stand-in decodes greedily only: give temperature 0 (or top_k 1)")
        return prompt, stream, prepend, int(params.get("max_tokens", 16))

    def _response(self, text: str, pb_utils: Any) -> Any:
        arr = np.asarray([text.encode("utf-8")], dtype=self.out_dtype)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", arr.reshape(1, 1) if self.batched else arr)])

    def _generate(self, request: Any, pb_utils: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt, stream, prepend, max_tokens = self._params(request, pb_utils)
            tokens: list[int] = []
            sent = 0
            pending: Any = None
            for token in self.llm.generate(self.codec.encode(prompt), max_tokens):
                tokens.append(token)
                if stream:  # the new text only; the last step goes out with the final flag
                    text = self.codec.decode(tokens)
                    if pending is not None:
                        sender.send(pending)
                    pending, sent = self._response(text[sent:], pb_utils), len(text)
            if stream:
                sender.send(pending if pending is not None else self._response("", pb_utils),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            text = self.codec.decode(tokens)
            sender.send(self._response((prompt + text) if prepend else text, pb_utils),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # like vLLM: the error and the final flag, the model stays up
            error = pb_utils.TritonError(f"Error generating stream: {exc}")
            na = self._response("N/A", pb_utils).output_tensors()
            sender.send(pb_utils.InferenceResponse(output_tensors=na, error=error),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def execute(self, requests: list[Any]) -> None:
        import triton_python_backend_utils as pb_utils

        for request in requests:
            self._generate(request, pb_utils)
        return None

    def finalize(self) -> None:
        self.llm = None
