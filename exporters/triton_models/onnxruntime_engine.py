"""Triton Python-backend engine: runs the bundle's ONNX on onnxruntime (CPU, or CUDA when available).

For Triton builds without the onnxruntime backend (e.g. the tritonserver inside nvidia-pytriton).
The requests Triton batched are concatenated on the batch axis, run once, and split back.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Serves `model.onnx` in this version directory with the signature declared in config.pbtxt."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        here = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", 0))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), opts, providers=providers)

    def execute(self, requests: list[Any]) -> list[Any]:
        parts = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            out = self.session.run([self.output_name], {self.input_name: np.concatenate(parts, axis=0)})[0]
        except Exception as exc:
            error = pb_utils.TritonError(f"onnxruntime failed: {str(exc).splitlines()[0]}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for part in parts:
            chunk = out[start : start + part.shape[0]]
            start += part.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, chunk)]))
        return responses

    def finalize(self) -> None:
        self.session = None
