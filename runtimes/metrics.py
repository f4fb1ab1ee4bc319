"""Runtime counters under Triton's metric names, plus batch fill ratio and padded slots. Thread-safe.

Triton names (cumulative since start): nv_inference_request_success / _failure (instances),
nv_inference_count (instances inferred, fillers excluded), nv_inference_exec_count (backend runs),
nv_inference_request_duration_us, nv_inference_queue_duration_us, nv_inference_compute_input_duration_us
(packing), nv_inference_compute_infer_duration_us (backend), nv_inference_compute_output_duration_us
(unpacking), nv_inference_pending_request_count (gauge: instances queued now).
Ours: muxdeploy_groups, muxdeploy_slots, muxdeploy_padded_slots (filler slots), muxdeploy_batch_fill_ratio
(real instances / slots run), muxdeploy_deadline_exceeded, muxdeploy_cancelled, muxdeploy_queue_full,
muxdeploy_invalid_instances, muxdeploy_backend_failures (batches), muxdeploy_workers_retired (workers whose
backend failed its probe after a failed batch and stopped taking batches).
"""

from __future__ import annotations

import threading

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "muxdeploy_groups",
    "muxdeploy_slots",
    "muxdeploy_padded_slots",
    "muxdeploy_deadline_exceeded",
    "muxdeploy_cancelled",
    "muxdeploy_queue_full",
    "muxdeploy_invalid_instances",
    "muxdeploy_backend_failures",
    "muxdeploy_workers_retired",
)


class Metrics:
    """Cumulative counters; `add(**deltas)` from any thread, `snapshot()` for a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(COUNTERS, 0)

    def add(self, **deltas: float) -> None:
        """Add to named counters (unknown names are a programming error)."""
        with self._lock:
            for key, value in deltas.items():
                self._values[key] += value

    def batch(self, instances: int, groups: int, n: int) -> None:
        """Record one backend execution of `groups` groups holding `instances` real instances."""
        slots = groups * n
        self.add(
            nv_inference_exec_count=1,
            nv_inference_count=instances,
            muxdeploy_groups=groups,
            muxdeploy_slots=slots,
            muxdeploy_padded_slots=slots - instances,
        )

    def snapshot(self, pending: int = 0) -> dict[str, float]:
        """All counters, the pending gauge and the fill ratio, as ints/floats."""
        with self._lock:
            values = dict(self._values)
        out: dict[str, float] = {k: int(v) for k, v in values.items()}
        out["nv_inference_pending_request_count"] = int(pending)
        slots = values["muxdeploy_slots"]
        out["muxdeploy_batch_fill_ratio"] = (values["nv_inference_count"] / slots) if slots else 0.0
        return out
