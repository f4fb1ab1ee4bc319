"""onnxruntime on a CUDA GPU: device-resident inputs and outputs, and one CUDA graph per batch bucket.

Each batch size the runtime sends is rounded up to a bucket (powers of two, and the bundle's max batch); each
bucket owns a device input, a device output, an I/O binding and, with CUDA graphs on, its own graph
(`gpu_graph_id`). The graph is captured by onnxruntime on the bucket's first runs and replayed afterwards,
so a step costs one host->device copy of the ids, one graph launch and one device->host copy of the outputs,
whatever the number of kernels: small steps are no longer bound by launching them one by one.

API used (onnxruntime >= 1.16 with the CUDA execution provider): provider option `enable_cuda_graph`,
`OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", device_id)`, `OrtValue.update_inplace(array)`,
`OrtValue.numpy()`, `session.io_binding()` with `bind_ortvalue_input/bind_ortvalue_output`,
`RunOptions.add_run_config_entry("gpu_graph_id", id)`, `session.run_with_iobinding(binding, run_options)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

# A bucket's first runs are onnxruntime's warm-up and graph capture (one regular run, then the capturing run;
# one more for margin). They run alone in the process: see CaptureGuard.
CAPTURE_RUNS = 3


class CaptureGuard:
    """Process-wide reader/writer lock for CUDA graph capture.

    onnxruntime captures in CUDA's global capture mode: while one thread captures, any CUDA call from another
    thread that is not capture-safe (a synchronize, a pageable copy; another session's regular run) fails both
    with `cudaErrorStreamCaptureUnsupported`. Two workers with their own sessions hit that when one meets a new
    bucket while the other runs. So a bucket's capture runs hold the lock exclusively, and every other run
    (graph replays, uncaptured runs) holds it shared; writers go first so that replays cannot starve a capture.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Run beside other shared holders; wait while a capture runs or waits."""
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run alone: no other run of any CudaIO in this process meanwhile."""
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


CAPTURE_GUARD = CaptureGuard()


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get their own buffers and graph: 1, 2, 4, ... below max_batch, and max_batch."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


@dataclass
class _Slot:
    """The device buffers, binding and run options of one batch bucket."""

    size: int
    staging: np.ndarray  # host input of the bucket's size: a partial batch is copied in, the rest stays padding
    device_input: Any
    device_output: Any
    binding: Any
    run_options: Any
    runs: int = 0


class CudaIO:
    """Runs [B, ...] feeds through a CUDA session with fixed device buffers per bucket (and CUDA graphs)."""

    def __init__(
        self,
        ort: Any,
        session: Any,
        input_name: str,
        input_shape: tuple[int, ...],
        input_dtype: np.dtype,
        output_name: str,
        output_shape: tuple[int, ...],
        max_batch: int,
        device_id: int,
        graphs: bool,
    ) -> None:
        self.ort = ort
        self.session = session
        self.input_name, self.input_shape, self.input_dtype = input_name, input_shape, np.dtype(input_dtype)
        self.output_name, self.output_shape = output_name, output_shape
        self.device_id = device_id
        self.graphs = graphs
        self.buckets = batch_buckets(max_batch)
        self._slots: dict[int, _Slot] = {}
        self._output_dtype = _output_dtype(session, output_name)

    def bucket(self, batch: int) -> int:
        """The bucket a batch of `batch` groups runs in."""
        return next(size for size in self.buckets if size >= batch)

    def _slot(self, size: int) -> _Slot:
        slot = self._slots.get(size)
        if slot is None:
            ort = self.ort
            staging = np.zeros((size, *self.input_shape), dtype=self.input_dtype)
            dev_in = ort.OrtValue.ortvalue_from_numpy(staging, "cuda", self.device_id)
            dev_out = ort.OrtValue.ortvalue_from_shape_and_type(
                [size, *self.output_shape], self._output_dtype, "cuda", self.device_id
            )
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, dev_in)
            binding.bind_ortvalue_output(self.output_name, dev_out)
            options = ort.RunOptions()
            if self.graphs:
                options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(size) + 1))
            slot = self._slots[size] = _Slot(size, staging, dev_in, dev_out, binding, options)
        return slot

    def run(self, feed: np.ndarray) -> np.ndarray:
        """Outputs [B, ...] for `feed` [B, ...] (B <= max_batch), computed in the feed's bucket."""
        batch = feed.shape[0]
        slot = self._slot(self.bucket(batch))
        if batch == slot.size:
            slot.device_input.update_inplace(np.ascontiguousarray(feed))
        else:
            slot.staging[:batch] = feed  # the rows past `batch` keep earlier valid ids; their outputs are dropped
            slot.device_input.update_inplace(slot.staging)
        with self._guard(slot):
            self.session.run_with_iobinding(slot.binding, slot.run_options)
            out = slot.device_output.numpy()
        slot.runs += 1
        return out if batch == slot.size else out[:batch]

    def _guard(self, slot: _Slot) -> Any:
        """Exclusive for the bucket's capture runs; shared otherwise (a run without graphs must not overlap
        another session's capture either)."""
        return CAPTURE_GUARD.exclusive() if self.graphs and slot.runs < CAPTURE_RUNS else CAPTURE_GUARD.shared()


def _output_dtype(session: Any, name: str) -> np.dtype:
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    for out in session.get_outputs():
        if out.name == name:
            return np.dtype(types.get(out.type, np.float32))
    return np.dtype(np.float32)
