"""A Ray Serve deployment of a muxdeploy bundle: replicas, each batching single instances with `@serve.batch`.

    from ray import serve
    from muxdeploy.serving.ray import mux_app
    serve.run(mux_app("mux_model", num_replicas=2), route_prefix="/mux")
    # POST /mux {"input_ids": [...]} or {"text": "..."}; or handle.predict.remote(instance)

Ray's batcher collects single instances from concurrent callers; each batch then runs either
- `mode="instance_batch"`: the instance-batched ONNX (input_ids [M, L]) on onnxruntime, which packs the
  M instances into N-slot groups inside the graph (`muxdeploy export --instance-batch`), or
- `mode="packer"`: `MuxRuntime.predict`, the runtime's packer and backend (TensorRT, onnxruntime).
`@serve.batch` has no per-item error channel (one exception fails the whole batch), so every instance
is validated and encoded BEFORE it enters a batch: a bad one fails only its own call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from muxdeploy.core.errors import InstanceError, UserInputError
from muxdeploy.core.manifest import Manifest, instance_onnx_name
from muxdeploy.runtimes.instances import InstanceEncoder
from muxdeploy.runtimes.results import format_outputs, to_jsonable

MODES = ("auto", "instance_batch", "packer")
INSTANCE_BATCH_NAME = instance_onnx_name()  # the fp32 instance-batched graph `export --instance-batch` writes


class MuxDeployment:
    """One replica: validation + a batch runner over one bundle."""

    def __init__(
        self,
        bundle: str,
        mode: str = "auto",
        max_batch_size: int | None = None,
        batch_wait_timeout_s: float = 0.002,
        backend: str = "auto",
        intra_op_threads: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserInputError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.manifest = Manifest.load(bundle)
        self.encoder = InstanceEncoder(self.manifest)
        n = self.manifest.num_instances
        has_instance_graph = INSTANCE_BATCH_NAME in self.manifest.artifacts
        if mode == "auto":
            mode = "instance_batch" if has_instance_graph and backend in ("auto", "onnxruntime") else "packer"
        if mode == "instance_batch" and not has_instance_graph:
            raise UserInputError(
                f"{bundle} has no {INSTANCE_BATCH_NAME}; re-export with `muxdeploy export ... --instance-batch` "
                "or use mode='packer'"
            )
        self.mode = mode
        self.max_instances = self.manifest.max_batch * n
        if mode == "instance_batch":
            from muxdeploy.runtimes.backends.onnxruntime import make_session

            path = self.manifest.verify_artifact(INSTANCE_BATCH_NAME)
            self.session = make_session(path, device="cpu", intra_op_threads=intra_op_threads)
            self.max_instances = int(
                self.manifest.artifacts[INSTANCE_BATCH_NAME].get("max_instances", self.max_instances)
            )
        else:
            from muxdeploy.runtimes.runtime import MuxRuntime

            self.runtime = MuxRuntime(bundle, backend=backend, intra_op_threads=intra_op_threads)
        size = max_batch_size or self.max_instances
        if not 1 <= size <= self.max_instances:
            raise UserInputError(f"max_batch_size {size} is outside 1..{self.max_instances} (max batch * N)")
        self._run_batch.set_max_batch_size(size)
        self._run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches: list[int] = []

    async def predict(self, instance: Any) -> dict[str, Any]:
        """One instance -> its JSON-ready result. Raises InstanceError (only for this call) when it is invalid."""
        row, length = self.encoder.encode_one(instance)  # validated before it can join a batch
        return to_jsonable(await self._run_batch((row, length)))

    async def __call__(self, request: Any) -> Any:
        """HTTP ingress: {"input_ids": [...]} | {"text": "..."} | {"pixels": [...]} -> result, or 400 + error."""
        from starlette.responses import JSONResponse

        try:
            doc = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"request body is not valid JSON ({exc})"}, status_code=400)
        keys = [k for k in ("input_ids", "text", "pixels") if isinstance(doc, dict) and k in doc]
        if len(keys) != 1:
            return JSONResponse({"error": "body needs exactly one of 'input_ids', 'text', 'pixels'"}, status_code=400)
        instance = np.asarray(doc["pixels"], dtype=np.float32) if keys[0] == "pixels" else doc[keys[0]]
        try:
            return {"output": await self.predict(instance)}
        except InstanceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _run_batch(self, items: list[tuple[np.ndarray, int]]) -> list[dict[str, Any]]:
        """Validated rows of many callers -> one run -> one result per caller, in order."""
        self.batches.append(len(items))
        # off the replica's event loop, so callers keep queueing the next batch while this one runs
        return await asyncio.to_thread(self._run_rows, items)

    def _run_rows(self, items: list[tuple[np.ndarray, int]]) -> list[dict[str, Any]]:
        rows = np.stack([row for row, _ in items])
        lengths = np.fromiter((length for _, length in items), dtype=np.int64, count=len(items))
        if self.mode == "instance_batch":
            outputs = self.session.run(None, {self.manifest.input_name: rows})[0]
            return format_outputs(self.manifest.task, outputs, lengths, self.manifest.labels)
        instances = (
            [row[:length] for row, length in zip(rows, lengths.tolist(), strict=True)] if rows.ndim == 2 else list(rows)
        )
        return self.runtime.predict(instances)

    def stats(self) -> dict[str, Any]:
        """Batches run so far by this replica (which one: `replica`): count, sizes and mode."""
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "mode": self.mode,
            "batches": len(self.batches),
            "instances": sum(self.batches),
            "max_batch": max(self.batches, default=0),
        }


def mux_app(
    bundle: str | Path,
    name: str = "muxdeploy",
    mode: str = "auto",
    num_replicas: int = 1,
    max_batch_size: int | None = None,
    batch_wait_timeout_s: float = 0.002,
    backend: str = "auto",
    intra_op_threads: int | None = None,
    ray_actor_options: dict[str, Any] | None = None,
) -> Any:
    """A bound Ray Serve application for `bundle` (pass it to `serve.run`)."""
    bundle = Path(bundle).resolve()
    Manifest.load(bundle)  # fail here, in one line, rather than in every replica
    deployment = serve.deployment(
        MuxDeployment,
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=ray_actor_options if ray_actor_options is not None else {"num_cpus": 0},
        max_ongoing_requests=4 * (max_batch_size or 64),
    )
    return deployment.bind(str(bundle), mode, max_batch_size, batch_wait_timeout_s, backend, intra_op_threads)
