"""What a bundle looks like over the wire: V2 tensor names, datatypes and shapes, and results -> tensors.

Inputs (batch axis = instances): `input_ids` INT32/INT64 [B, T] (T <= L; trailing pad ids are padding)
or `text` BYTES [B] when the bundle has a tokenizer; image bundles take `pixels` FP32 [B, ...].
Outputs per task:
- sequence classification / images: `logits` FP32 [B, C], `label_id` INT64 [B]
- token classification: `logits` FP32 [B, L, C] (0 past an instance's length), `label_ids` INT64 [B, L] (-1 past it)
- retrieval: `token_ids` INT64 [B, L] (-1 past an instance's length)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from muxdeploy.core.manifest import Manifest
from muxdeploy.serving.v2 import ProtocolError


class WireModel:
    """The V2 view of one bundle."""

    def __init__(self, manifest: Manifest, name: str, max_instances: int) -> None:
        self.manifest = manifest
        self.name = name
        self.max_instances = max_instances
        self.task = manifest.task
        spec = manifest.data["inputs"][0]
        self.is_image = np.dtype(spec["dtype"]).kind == "f"
        self.row_shape = [int(d) for d in spec["shape"][2:]]
        self.out_tail = [int(d) for d in manifest.data["outputs"][0]["shape"][2:]]
        self.has_tokenizer = bool(manifest.data.get("tokenizer"))

    # ---- metadata ----------------------------------------------------------------------------------
    def inputs(self) -> list[dict[str, Any]]:
        """V2 input metadata (shape -1 = any)."""
        if self.is_image:
            return [{"name": "pixels", "datatype": "FP32", "shape": [-1, *self.row_shape]}]
        specs = [{"name": "input_ids", "datatype": "INT32", "shape": [-1, -1]}]
        if self.has_tokenizer:
            specs.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
        return specs

    def outputs(self) -> list[dict[str, Any]]:
        """V2 output metadata."""
        if len(self.out_tail) == 1:
            return [
                {"name": "logits", "datatype": "FP32", "shape": [-1, self.out_tail[0]]},
                {"name": "label_id", "datatype": "INT64", "shape": [-1]},
            ]
        seq_len = self.out_tail[0]
        if self.task == "retrieval":
            return [{"name": "token_ids", "datatype": "INT64", "shape": [-1, seq_len]}]
        return [
            {"name": "logits", "datatype": "FP32", "shape": [-1, *self.out_tail]},
            {"name": "label_ids", "datatype": "INT64", "shape": [-1, seq_len]},
        ]

    def metadata(self) -> dict[str, Any]:
        """GET /v2/models/<name>."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "muxdeploy",
            "inputs": self.inputs(),
            "outputs": self.outputs(),
        }

    def config(self) -> dict[str, Any]:
        """GET /v2/models/<name>/config: a Triton-style config (perf_analyzer reads it)."""

        def triton(spec: dict[str, Any]) -> dict[str, Any]:
            return {
                "name": spec["name"],
                "data_type": "TYPE_" + spec["datatype"].replace("BYTES", "STRING"),
                "dims": spec["shape"][1:],
            }

        n = self.manifest.num_instances
        return {
            "name": self.name,
            "platform": "muxdeploy",
            "max_batch_size": self.max_instances,
            "input": [triton(s) for s in self.inputs()],
            "output": [triton(s) for s in self.outputs()],
            "dynamic_batching": {"preferred_batch_size": [n * k for k in (1, 2, 4) if n * k <= self.max_instances]},
            "parameters": {"num_instances": {"string_value": str(n)}},
        }

    # ---- request -> instances ----------------------------------------------------------------------
    def instances(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """The instances a V2 request carries (one per row of the batch axis)."""
        if len(inputs) != 1:
            raise ProtocolError(
                f"give exactly one input, one of {[s['name'] for s in self.inputs()]}; got {list(inputs)}"
            )
        ((name, array),) = inputs.items()
        if self.is_image:
            if name != "pixels" or list(array.shape[1:]) != self.row_shape or array.dtype.kind != "f":
                raise ProtocolError(f"input must be 'pixels' FP32 of shape [B, {', '.join(map(str, self.row_shape))}]")
            return list(array.astype(np.float32))
        if name == "text":
            if not self.has_tokenizer:
                raise ProtocolError("this model has no tokenizer; send 'input_ids'")
            flat = array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array
            if flat.ndim != 1 or flat.dtype != object:
                raise ProtocolError("input 'text' must be BYTES of shape [B] or [B, 1]")
            return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
        if name != "input_ids":
            raise ProtocolError(f"unknown input {name!r}; this model takes {[s['name'] for s in self.inputs()]}")
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise ProtocolError(f"input 'input_ids' must be INT32 or INT64 of shape [B, T], got {list(array.shape)}")
        pad = self.manifest.pad_token_id
        rows = array.astype(np.int64)
        keep = rows.shape[1] - np.argmax((rows != pad)[:, ::-1], axis=1)  # strip trailing pad ids
        keep[(rows == pad).all(axis=1)] = 0
        return [row[:k] for row, k in zip(rows, keep.tolist(), strict=True)]

    # ---- results -> tensors ------------------------------------------------------------------------
    def tensors(self, results: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Stack per-instance results into the V2 output tensors."""
        b = len(results)
        if len(self.out_tail) == 1:
            logits = np.stack([r["logits"] for r in results]).astype(np.float32)
            return {"logits": logits, "label_id": np.array([r["label_id"] for r in results], dtype=np.int64)}
        seq_len = self.out_tail[0]
        key = "token_ids" if self.task == "retrieval" else "label_ids"
        ids = np.full((b, seq_len), -1, dtype=np.int64)
        for i, r in enumerate(results):
            ids[i, : len(r[key])] = r[key]
        if self.task == "retrieval":
            return {"token_ids": ids}
        logits = np.zeros((b, *self.out_tail), dtype=np.float32)
        for i, r in enumerate(results):
            logits[i, : len(r["logits"])] = r["logits"]
        return {"logits": logits, "label_ids": ids}
