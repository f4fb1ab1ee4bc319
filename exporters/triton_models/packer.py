"""Triton Python-backend packer: single instances from many requests -> N-slot groups -> ONE engine request.

Dynamic batching hands `execute` the requests it collected. Each request's instances are validated
on their own (a bad request gets its own error response and never enters a group); the good ones are
concatenated in request order, padded to groups of N with the bundle's filler, sent to the engine
model in one BLS request per engine batch, and the outputs are sliced back to their requests.
The packing is `muxdeploy.runtimes.packing`, copied beside this file by `muxdeploy export-triton`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _error(message: str) -> Any:
    code = getattr(getattr(pb_utils, "TritonError", object), "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    """The public model of a muxdeploy Triton repository built with `--packer python`."""

    def initialize(self, args: dict[str, str]) -> None:
        here = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, here)
        from muxdeploy.core.manifest import MANIFEST_NAME
        from muxdeploy.runtimes import packing  # the one packer, copied beside this file

        self.packing = packing
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        with open(os.path.join(here, MANIFEST_NAME)) as f:
            manifest = json.load(f)
        self.n = int(manifest["num_instances"])
        self.seq_len = int(manifest["seq_len"])
        self.pad_id = int(manifest.get("pad_token_id", 0))
        vocab = manifest.get("vocab_size")
        self.vocab_size = int(vocab) if vocab is not None else None
        self.filler = np.asarray(manifest["filler"], dtype=np.int32)
        self.engine = params["engine_model"]
        self.engine_max_batch = int(params["engine_max_batch"])
        self.strict = params.get("strict", "false") == "true"
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def _instances(self, request: Any) -> tuple[np.ndarray | None, str | None]:
        """[b, L] rows of one request, or an error message naming the bad instance."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return None, f"request has no input {self.input_name!r}"
        rows = tensor.as_numpy()
        if rows.ndim != 2:
            return None, f"{self.input_name} must be [batch, tokens], got shape {list(rows.shape)}"
        enc = self.packing.encode_token_instances(rows, self.seq_len, self.pad_id, self.vocab_size, strict=self.strict)
        if enc.errors:
            index = min(enc.errors)
            return None, f"instance {index}: {enc.errors[index]}"
        return enc.ids, None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parts: list[np.ndarray] = []
        owners: list[int] = []
        for i, request in enumerate(requests):
            rows, err = self._instances(request)
            if err is not None:
                responses[i] = pb_utils.InferenceResponse(error=_error(err))
            else:
                parts.append(rows)
                owners.append(i)
        if not parts:
            return responses
        rows = np.concatenate(parts, axis=0)
        groups = self.packing.pack_groups(rows, self.n, self.filler)
        outputs = []
        for batch in self.packing.iter_batches(groups, self.engine_max_batch):
            infer = pb_utils.InferenceRequest(
                model_name=self.engine,
                requested_output_names=[self.output_name],
                inputs=[pb_utils.Tensor(self.input_name, np.array(batch, dtype=np.int32, order="C", copy=True))],
            )
            result = infer.exec()
            if result.has_error():
                message = f"engine model {self.engine} failed: {result.error().message()}"
                for i in owners:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                return responses
            outputs.append(pb_utils.get_output_tensor_by_name(result, self.output_name).as_numpy())
        flat = self.packing.unpack_groups(np.concatenate(outputs, axis=0), rows.shape[0])
        start = 0
        for i, part in zip(owners, parts, strict=True):
            out = flat[start : start + part.shape[0]]
            start += part.shape[0]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)])
        return responses

    def finalize(self) -> None:
        self.packing = None
