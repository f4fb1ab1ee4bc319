"""A Ray Serve deployment of a muxdeploy bundle: replicas, each batching single instances with `@serve.batch`.

    from ray import serve
    from muxdeploy.serving.ray import mux_app
    serve.run(mux_app("mux_model", num_replicas=2), route_prefix="/mux")
    # POST /mux {"input_ids": [...]} or {"text": "..."}; or handle.predict.remote(instance)

Who batches what: Ray's router spreads single calls over the replicas; inside a replica, `@serve.batch`
collects the calls that arrived together into one list of M instances; muxdeploy then packs those M
instances into N-slot groups and runs them in one backend call, either
- `mode="instance_batch"`: the instance-batched ONNX (input_ids [M, L]) on onnxruntime, which packs the
  M instances into N-slot groups inside the graph (`muxdeploy export --instance-batch`), or
- `mode="packer"`: `MuxRuntime.predict`, the runtime's packer and backend (TensorRT, onnxruntime).
`@serve.batch` has no per-item error channel (one exception fails the whole batch), so every instance
is validated and encoded BEFORE it enters a batch: a bad one fails only its own call.

GPUs: `num_gpus` per replica (default: 1 when the Ray cluster has GPUs, else 0). Ray assigns each replica its
GPU(s) and sets CUDA_VISIBLE_DEVICES in the replica's process; the replica runs its onnxruntime CUDA session /
TensorRT context on the device index that GPU has among the visible ones (`assigned_device`), never on
device 0 by assumption. `stats()` reports a replica's GPU, instances/s, fill ratio and queue.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from muxdeploy.core.errors import InstanceError, UserInputError
from muxdeploy.core.manifest import Manifest, instance_onnx_name
from muxdeploy.runtimes.instances import InstanceEncoder
from muxdeploy.runtimes.results import format_outputs, to_jsonable

MODES = ("auto", "instance_batch", "packer")
DEVICES = ("auto", "cpu")  # auto: the GPU Ray assigned (CPU when none); cpu: always the CPU
INSTANCE_BATCH_NAME = instance_onnx_name()  # the fp32 instance-batched graph `export --instance-batch` writes


def assigned_device(gpu_ids: Sequence[Any], cuda_visible: str | None) -> int | None:
    """The CUDA device index (as this process numbers devices) of the first GPU Ray assigned, or None for none.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the index is the GPU's position in that list (0 for a
    single assigned GPU); with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES (no list) it is the GPU's own id.
    """
    if not gpu_ids:
        return None
    first = str(gpu_ids[0])
    if not cuda_visible:
        return int(first)
    visible = [v.strip() for v in cuda_visible.split(",") if v.strip()]
    if first not in visible:
        raise UserInputError(
            f"Ray assigned GPU {first} but CUDA_VISIBLE_DEVICES is {cuda_visible!r}; do not override "
            "CUDA_VISIBLE_DEVICES inside Ray replicas"
        )
    return visible.index(first)


def default_num_gpus() -> float:
    """1 when the Ray cluster (or, before ray.init, this host) has a GPU, else 0."""
    if ray.is_initialized():
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    try:
        from ray._private.accelerators import NvidiaGPUAcceleratorManager

        return 1.0 if NvidiaGPUAcceleratorManager.get_current_node_num_accelerators() > 0 else 0.0
    except Exception:  # Ray's accelerator probe moved or failed: no GPU found
        return 0.0


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
        device: str = "auto",
    ) -> None:
        if mode not in MODES:
            raise UserInputError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if device not in DEVICES:
            raise UserInputError(f"device {device!r} is not one of {', '.join(DEVICES)}")
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
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        self.device_id = assigned_device(self.gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        on_cpu = device == "cpu" or self.device_id is None
        if mode == "instance_batch":
            from muxdeploy.runtimes.backends.onnxruntime import make_session

            path = self.manifest.verify_artifact(INSTANCE_BATCH_NAME)
            self.session = make_session(
                path,
                device="cpu" if on_cpu else "auto",
                intra_op_threads=intra_op_threads,
                device_id=self.device_id or 0,
            )
            self.max_instances = int(
                self.manifest.artifacts[INSTANCE_BATCH_NAME].get("max_instances", self.max_instances)
            )
        else:
            from muxdeploy.runtimes.runtime import MuxRuntime

            self.runtime = MuxRuntime(
                bundle,
                backend="onnxruntime-cpu" if on_cpu and backend == "auto" else backend,
                intra_op_threads=intra_op_threads,
                device_id=self.device_id or 0,
            )
        size = max_batch_size or self.max_instances
        if not 1 <= size <= self.max_instances:
            raise UserInputError(f"max_batch_size {size} is outside 1..{self.max_instances} (max batch * N)")
        self._run_batch.set_max_batch_size(size)
        self._run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches: list[int] = []
        self.slots = 0  # N-slot group slots the batches ran (fill ratio = instances / slots)
        self.waiting = 0  # calls waiting for their batch to run (this replica's queue)
        self.first_batch_at: float | None = None

    async def predict(self, instance: Any) -> dict[str, Any]:
        """One instance -> its JSON-ready result. Raises InstanceError (only for this call) when it is invalid."""
        row, length = self.encoder.encode_one(instance)  # validated before it can join a batch
        self.waiting += 1
        try:
            return to_jsonable(await self._run_batch((row, length)))
        finally:
            self.waiting -= 1

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
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        n = self.manifest.num_instances
        self.slots += math.ceil(len(items) / n) * n
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

    def _backend_name(self) -> str:
        """What runs the batches: the session's execution providers, or the runtime's backend."""
        if self.mode == "instance_batch":
            return "onnxruntime " + ",".join(self.session.get_providers())
        return self.runtime.backend_name

    def stats(self) -> dict[str, Any]:
        """This replica's load: id, GPU, batches, instances, instances/s since its first batch, fill ratio, queue."""
        instances = sum(self.batches)
        seconds = time.monotonic() - self.first_batch_at if self.first_batch_at is not None else 0.0
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "mode": self.mode,
            "gpu_ids": self.gpu_ids,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_id": self.device_id,
            "backend": self._backend_name(),
            "batches": len(self.batches),
            "instances": instances,
            "max_batch": max(self.batches, default=0),
            "instances_per_s": round(instances / seconds, 1) if seconds > 0 else 0.0,
            "fill_ratio": round(instances / self.slots, 4) if self.slots else 0.0,
            "queue": self.waiting,
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
    num_gpus: float | None = None,
    device: str = "auto",
) -> Any:
    """A bound Ray Serve application for `bundle` (pass it to `serve.run`).

    num_gpus: GPUs per replica (None: 1 when the Ray cluster has GPUs, else 0); each replica runs on the GPU
    Ray assigns it (device="auto"), or on the CPU anyway (device="cpu"). ray_actor_options: passed to Ray as
    they are (they win over num_gpus).
    """
    bundle = Path(bundle).resolve()
    Manifest.load(bundle)  # fail here, in one line, rather than in every replica
    gpus = default_num_gpus() if num_gpus is None else float(num_gpus)
    if gpus < 0:
        raise UserInputError(f"num_gpus must be >= 0, got {num_gpus}")
    options = {"num_cpus": 0, **({"num_gpus": gpus} if gpus else {})}
    deployment = serve.deployment(
        MuxDeployment,
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=ray_actor_options if ray_actor_options is not None else options,
        max_ongoing_requests=4 * (max_batch_size or 64),
    )
    return deployment.bind(str(bundle), mode, max_batch_size, batch_wait_timeout_s, backend, intra_op_threads, device)
