"""What the HTTP and gRPC listeners share: the runtime, limits, drain flag, counters, error mapping and inference.

Both protocols decode a request into V2 tensors, then call `ServerState.infer`, which turns them into
instances (`WireModel`), submits them to `MuxRuntime.submit` (never blocking the event loop), awaits them and
stacks the results into output tensors. Failures are `ServingError`s carrying an HTTP status; the gRPC
listener maps that status to its own code (`muxdeploy.serving.grpc_server.GRPC_CODES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from muxdeploy.core.errors import BackendError, DeadlineExceeded, MuxError, QueueFull, UserInputError
from muxdeploy.runtimes.batcher import RuntimeClosed
from muxdeploy.runtimes.runtime import MuxRuntime
from muxdeploy.serving import prometheus
from muxdeploy.serving.model import WireModel
from muxdeploy.serving.v2 import ProtocolError

DRAINING = "the server is shutting down; retry on another replica"


class ServingError(Exception):
    """A request failure answered with HTTP `status` (gRPC maps it to a status code) and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_for(exc: BaseException) -> ServingError:
    """The ServingError (HTTP status) for a runtime or protocol exception."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, QueueFull):
        return ServingError(429, str(exc), {"Retry-After": "1"})
    if isinstance(exc, RuntimeClosed):
        return ServingError(503, DRAINING)
    if isinstance(exc, DeadlineExceeded):
        return ServingError(504, str(exc))
    if isinstance(exc, UserInputError):
        return ServingError(400, str(exc))
    if isinstance(exc, BackendError | MuxError):
        return ServingError(500, str(exc))
    return ServingError(500, f"internal error: {type(exc).__name__}: {exc}")


def deadline_from(params: dict[str, Any], remaining_s: float | None = None) -> float | None:
    """Seconds left for a request: Triton's `timeout` parameter (microseconds) and/or the caller's own deadline."""
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0):
        raise ProtocolError("parameter 'timeout' must be a positive number of microseconds")
    seconds = [s for s in (None if timeout is None else float(timeout) / 1e6, remaining_s) if s is not None]
    return min(seconds) if seconds else None


class ServerState:
    """Shared by every handler of both listeners: the runtime, limits, drain flag and counters."""

    def __init__(self, runtime: MuxRuntime, name: str, max_body_bytes: int, max_request_instances: int) -> None:
        self.runtime = runtime
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.max_request_instances = max_request_instances
        self.wire = WireModel(runtime.manifest, name, runtime.max_batch * runtime.num_instances)
        self.draining = False
        self._lock = threading.Lock()
        self.requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.responses: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.grpc_requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.in_flight = 0
        self.accepted = 0  # inference requests whose handler started (both protocols)
        self.answered = 0  # ... and whose response was produced (any status)

    # ---- health ------------------------------------------------------------------------------------
    def unready_reason(self) -> str | None:
        """Why the server is not ready (draining, or no engine worker left), or None when it is."""
        if self.draining:
            return "draining"
        m = self.runtime.metrics()
        if m.get("muxdeploy_workers_retired", 0) >= self.runtime.workers:
            return "no engine worker left: every worker's backend failed its health probe; restart the server"
        return None

    def check_model(self, name: str, version: str | None = None) -> None:
        """404 unless `name` (and `version`, when given) is the served model."""
        if name != self.name:
            raise ServingError(404, f"unknown model {name!r}; this server serves {self.name!r}")
        if version not in (None, "", "1"):
            raise ServingError(404, f"model {name!r} has version '1' only, not {version!r}")

    # ---- counters ----------------------------------------------------------------------------------
    def count(self, route: str, status: int) -> None:
        """One HTTP response of `status` on `route`."""
        with self._lock:
            self.requests[(("route", route),)] += 1
            self.responses[(("code", str(status)),)] += 1

    def count_grpc(self, method: str, code: str) -> None:
        """One gRPC call of `method` answered with status `code` (e.g. OK, INVALID_ARGUMENT)."""
        with self._lock:
            self.grpc_requests[(("method", method), ("code", code))] += 1

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Counts one inference request as accepted, in flight, then answered (whatever its outcome)."""
        with self._lock:
            self.accepted += 1
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1
                self.answered += 1

    def metrics_text(self) -> str:
        """Prometheus text: the runtime's counters, then both listeners' counters."""
        with self._lock:
            server = {
                "muxdeploy_http_requests": dict(self.requests),
                "muxdeploy_http_responses": dict(self.responses),
                "muxdeploy_grpc_requests": dict(self.grpc_requests),
                "muxdeploy_http_in_flight": {(): float(self.in_flight)},
                "muxdeploy_http_inference_accepted": {(): float(self.accepted)},
                "muxdeploy_http_inference_answered": {(): float(self.answered)},
            }
        return prometheus.render(self.name, self.runtime.metrics(), server)

    # ---- inference ---------------------------------------------------------------------------------
    async def run_instances(self, instances: list[Any], deadline_s: float | None) -> list[Any]:
        """Submit every instance (never blocking: a full queue answers 429), await all; results or exceptions."""
        if not instances:
            raise ServingError(400, "the request holds no instances")
        if len(instances) > self.max_request_instances:
            raise ServingError(
                413,
                f"{len(instances)} instances in one request exceed the limit of {self.max_request_instances}; split it",
            )
        if self.draining:
            raise ServingError(503, DRAINING)
        reason = self.unready_reason()
        if reason is not None:
            raise ServingError(503, reason)
        futures: list[Future] = []
        try:
            for inst in instances:
                futures.append(self.runtime.submit(inst, deadline=deadline_s, timeout=0))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline_s: float | None, wanted: list[str] | None
    ) -> dict[str, np.ndarray]:
        """V2 input tensors -> V2 output tensors (all, or the `wanted` ones); the first failed row fails the call."""
        instances = self.wire.instances(inputs)
        results = await self.run_instances(instances, deadline_s)
        for i, res in enumerate(results):
            if isinstance(res, BaseException):
                err = error_for(res)
                prefix = f"row {i}: " if len(results) > 1 else ""
                raise ServingError(err.status, prefix + str(err), err.headers)
        outputs = self.wire.tensors(results)
        if wanted is not None:
            unknown = [o for o in wanted if o not in outputs]
            if unknown:
                raise ServingError(400, f"unknown output {unknown[0]!r}; this model returns {list(outputs)}")
            outputs = {k: outputs[k] for k in wanted}
        return outputs


def triton_stats(name: str, m: dict[str, float]) -> dict[str, Any]:
    """Triton's statistics extension entry for one model (perf_analyzer reads it); durations in ns."""

    def stat(count: float, us: float) -> dict[str, int]:
        return {"count": int(count), "ns": int(us * 1000)}

    ok, runs = m["nv_inference_request_success"], m["nv_inference_exec_count"]
    return {
        "name": name,
        "version": "1",
        "last_inference": 0,
        "inference_count": int(m["nv_inference_count"]),
        "execution_count": int(runs),
        "inference_stats": {
            "success": stat(ok, m["nv_inference_request_duration_us"]),
            "fail": stat(m["nv_inference_request_failure"], 0),
            "queue": stat(ok, m["nv_inference_queue_duration_us"]),
            "compute_input": stat(runs, m["nv_inference_compute_input_duration_us"]),
            "compute_infer": stat(runs, m["nv_inference_compute_infer_duration_us"]),
            "compute_output": stat(runs, m["nv_inference_compute_output_duration_us"]),
            "cache_hit": stat(0, 0),
            "cache_miss": stat(0, 0),
        },
        "batch_stats": [],
    }
