"""MuxRuntime: the torch-free way an application runs a muxdeploy bundle.

    from muxdeploy.runtimes import MuxRuntime
    with MuxRuntime("mux_model") as rt:
        rt.predict(["a fine film", "dull"])          # ordered, one result per instance
        rt.predict_array(ids)                        # [M, L] ids -> raw outputs [M, ...], no dicts
        fut = rt.submit([101, 2023, 102])            # background dynamic batching
        fut.result()

Results are plain dicts (see `muxdeploy.runtimes.results`). Instances are token-id sequences, texts (when the
bundle has tokenizer.json) or, for image bundles, float arrays of the model's image shape.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import InstanceError, QueueFull, UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends import Backend, Selection, create, select
from muxdeploy.runtimes.batcher import DynamicBatcher, Request, RuntimeClosed
from muxdeploy.runtimes.instances import InstanceEncoder
from muxdeploy.runtimes.metrics import Metrics
from muxdeploy.runtimes.packing import ISOLATION_MODES, pack_groups, pack_isolated, unpack_groups
from muxdeploy.runtimes.results import format_outputs, gc_paused

BackendFactory = Callable[[], Backend]


class MuxRuntime:
    """Loads a bundle and runs instances through it: `predict` (synchronous) and `submit` (dynamic batching).

    Args:
        bundle: bundle directory (with muxdeploy.json).
        backend: "auto" (TensorRT when the module imports and a matching engine exists, else onnxruntime
            with CUDA when present, else CPU), "tensorrt", "onnxruntime", "onnxruntime-cpu",
            "onnxruntime-cuda", or a zero-argument callable returning a new `Backend` (one per worker).
        precision: "auto" (see `muxdeploy.runtimes.backends.PREFERENCE`), "fp32", "fp16" or "int8".
        max_batch: largest number of N-slot groups per backend run (default and ceiling: the bundle's).
        max_wait_ms: submit(): longest the oldest queued instance waits for a fuller batch (0: no wait).
        workers: submit(): engine workers, each with its own backend (context, stream, buffers).
        queue_size: submit(): queue bound in instances (default 4 full batches per worker).
        strict: refuse instances longer than L instead of truncating them.
        submit_timeout: seconds submit() blocks on a full queue before raising QueueFull.
        preferred_batch_sizes: submit(): instance counts (multiples of N) worth dispatching without waiting.
        intra_op_threads: onnxruntime threads per session (default: all cores, divided among workers).
        device_id: CUDA device for GPU backends.
        cuda_graphs: capture one CUDA graph per batch size (TensorRT) or batch bucket (onnxruntime CUDA, whose
            batches are padded to a power of two or max_batch). None: on for onnxruntime CUDA, off for TensorRT.
        provider_options: extra onnxruntime CUDA provider options (e.g. {"sdpa_kernel": "1"}).
        isolation: who may share an N-slot group with an instance (a muxed prediction depends on its
            group-mates): "none" (anyone: FIFO over all callers, the fastest), "request" (only instances of
            the same request: one predict()/submit_many() call, or submit()s with the same request_key;
            the rest of the group holds fillers) or "fillers" (nobody: one instance per group, the other
            N-1 slots hold the fixed filler, so an instance's answer never depends on what else is sent;
            about N times the compute per instance). See docs/RUNTIME.md, "Group-mates".
    """

    def __init__(
        self,
        bundle: str | Path,
        backend: str | BackendFactory = "auto",
        precision: str = "auto",
        max_batch: int | None = None,
        max_wait_ms: float = 2.0,
        workers: int = 1,
        queue_size: int | None = None,
        strict: bool = False,
        submit_timeout: float = 10.0,
        preferred_batch_sizes: Sequence[int] = (),
        intra_op_threads: int | None = None,
        device_id: int = 0,
        cuda_graphs: bool | None = None,
        provider_options: dict[str, Any] | None = None,
        isolation: str = "none",
    ) -> None:
        if isolation not in ISOLATION_MODES:
            raise UserInputError(f"unknown isolation {isolation!r}; use one of {', '.join(ISOLATION_MODES)}")
        self.isolation = isolation
        self._request_keys = itertools.count()
        self.manifest = Manifest.load(bundle)
        self.num_instances = self.manifest.num_instances
        self.task = self.manifest.task
        self.labels = self.manifest.labels
        self.encoder = InstanceEncoder(self.manifest, strict=strict)
        if workers < 1:
            raise UserInputError(f"workers must be >= 1, got {workers}")
        if max_wait_ms < 0:
            raise UserInputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if queue_size is not None and queue_size < 1:
            raise UserInputError(f"queue_size must be >= 1, got {queue_size}")
        self.workers = int(workers)
        self.max_wait_ms = float(max_wait_ms)
        self.submit_timeout = float(submit_timeout)
        n = self.num_instances
        bad = [p for p in preferred_batch_sizes if p <= 0 or p % n]
        if bad:
            raise UserInputError(f"preferred batch sizes {bad} are not positive multiples of N={n}")
        self.preferred_batch_sizes = tuple(preferred_batch_sizes)
        ceiling = self.manifest.max_batch
        if max_batch is not None and not 1 <= max_batch <= ceiling:
            raise UserInputError(f"max_batch {max_batch} is outside 1..{ceiling}; pick one inside")
        self.max_batch = int(max_batch or ceiling)
        self.selection: Selection | None = None
        if isinstance(backend, str):
            self.selection = select(self.manifest, backend, precision)
            if self.selection.backend == "tensorrt":
                limit = self.manifest.artifacts[self.selection.artifact].get("max_batch")
                if limit is not None and max_batch is None:
                    self.max_batch = min(self.max_batch, int(limit))
            threads = intra_op_threads
            if threads is None and self.workers > 1:
                import os

                threads = max(1, (os.cpu_count() or 1) // self.workers)
            options = {
                "intra_op_threads": threads,
                "device_id": device_id,
                "cuda_graphs": cuda_graphs,
                "provider_options": provider_options,
            }
            selection = self.selection
            self._factory: BackendFactory = lambda: create(selection, self.manifest, self.max_batch, **options)
        elif callable(backend):
            self._factory = backend
        else:
            raise UserInputError(f"backend must be a name or a Backend factory, not {type(backend).__name__}")
        self._metrics = Metrics()
        self._backend = self._factory().activate()
        self.max_batch = min(self.max_batch, self._backend.max_batch)
        self._predict_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._batcher: DynamicBatcher | None = None
        self._pipelines: dict[int, ThreadPoolExecutor] = {}
        self._closed = False
        self.queue_size = int(queue_size) if queue_size is not None else 4 * self.max_batch * n * self.workers

    # ---- info ----------------------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        """What runs the model, e.g. 'onnxruntime-cpu fp32 (model.onnx)'."""
        return self.selection.describe() if self.selection else self._backend.name

    def metrics(self) -> dict[str, float]:
        """Counters with Triton's names plus batch fill ratio and padded slots (see `muxdeploy.runtimes.metrics`)."""
        pending = self._batcher.pending() if self._batcher else 0
        return self._metrics.snapshot(pending)

    # ---- synchronous ---------------------------------------------------------------------------
    def predict(self, instances: Sequence[Any] | np.ndarray, on_error: str = "raise") -> list[Any]:
        """One result per instance, in order (fillers dropped).

        A bad instance raises InstanceError naming it (on_error="raise"), or, with on_error="return",
        its place in the list holds the InstanceError and the others are still answered.
        """
        if on_error not in ("raise", "return"):
            raise UserInputError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        self._check_open()
        start = time.perf_counter()
        with gc_paused():
            enc = self.encoder.encode(instances, copy=False)  # the rows are done with before we return
            bad = len(enc.errors)
            if bad and on_error == "raise":
                self._metrics.add(nv_inference_request_failure=bad, muxdeploy_invalid_instances=bad)
                enc.raise_first_error()
            rows, lengths = enc.ids, enc.lengths
            if enc.errors:
                keep = np.ones(len(rows), dtype=bool)
                keep[list(enc.errors)] = False
                rows, lengths = rows[keep], lengths[keep]
            with self._predict_lock:
                answered = self._run_rows(self._backend, rows, lengths, owners=self._call_owners(len(rows)))
            self._metrics.add(
                nv_inference_request_success=len(answered),
                nv_inference_request_failure=bad,
                muxdeploy_invalid_instances=bad,
                nv_inference_request_duration_us=(time.perf_counter() - start) * 1e6 * len(enc.ids),
            )
            if not enc.errors:
                return answered
            out: list[Any] = []
            it = iter(answered)
            for i in range(len(enc.ids)):
                reason = enc.errors.get(i)
                out.append(InstanceError(f"instance {i}: {reason}") if reason else next(it))
            return out

    def predict_array(self, instances: Sequence[Any] | np.ndarray) -> np.ndarray:
        """The model's raw outputs for M instances as one array [M, ...], in order (fillers dropped).

        The fast path for array-in, array-out callers: the same validation, packing and backend as
        predict(), but no per-instance result dicts (a fifth of predict()'s host time per instance).
        Outputs are not cut to each instance's length: token tasks get [M, L, C], retrieval [M, L, V].
        A bad instance raises InstanceError naming it; nothing runs then.
        """
        self._check_open()
        start = time.perf_counter()
        enc = self.encoder.encode(instances, copy=False)  # the rows are done with before we return
        if enc.errors:
            bad = len(enc.errors)
            self._metrics.add(nv_inference_request_failure=bad, muxdeploy_invalid_instances=bad)
            enc.raise_first_error()
        with self._predict_lock:
            owners = self._call_owners(len(enc.ids))
            outputs = self._run_rows(self._backend, enc.ids, enc.lengths, raw=True, owners=owners)
        m = len(enc.ids)
        self._metrics.add(
            nv_inference_request_success=m, nv_inference_request_duration_us=(time.perf_counter() - start) * 1e6 * m
        )
        return outputs

    def _call_owners(self, m: int) -> np.ndarray | None:
        """Owners of the rows of one predict() call: one request, so only "fillers" separates them."""
        return np.arange(m) if self.isolation == "fillers" else None

    def _run_rows(
        self,
        backend: Backend,
        rows: np.ndarray,
        lengths: np.ndarray,
        raw: bool = False,
        owners: np.ndarray | None = None,
    ) -> Any:
        """Pack rows [M, ...] into groups, run them in batches of max_batch groups, unpack and format.

        `owners`: None packs FIFO; otherwise a group never holds rows of two owner runs (`pack_isolated`).

        With several batches, the backend runs them on a pipeline thread (`_pipeline`) and batch k+1 is queued
        before batch k is unpacked and formatted here, so the device does not wait for result objects.
        With `raw`, return the unpacked outputs as one array [M, ...] instead of per-instance results.
        """
        m, n = len(rows), self.num_instances
        if m == 0 and not raw:
            return []
        t0 = time.perf_counter()
        if owners is None:
            groups, positions = pack_groups(rows, n, self.encoder.filler), None
        else:
            groups, positions = pack_isolated(rows, n, self.encoder.filler, owners)
        t_input, t_infer, t_output = time.perf_counter() - t0, 0.0, 0.0
        results: list[Any] = []

        def timed_infer(batch: np.ndarray) -> tuple[np.ndarray, float]:
            t1 = time.perf_counter()
            return backend.infer(batch), time.perf_counter() - t1

        def finish(start: int, batch: np.ndarray, done: tuple[np.ndarray, float]) -> None:
            """Unpack (and format) the outputs of the batch whose first group is `start`."""
            nonlocal t_infer, t_output
            out, seconds = done
            t2 = time.perf_counter()
            if positions is None:
                first = start * n
                k = min(m - first, batch.shape[0] * n)
                kept = unpack_groups(out, k)
            else:  # the rows of this batch's groups are consecutive (positions increase with the row)
                lo, hi = np.searchsorted(positions, [start * n, (start + batch.shape[0]) * n])
                first, k = int(lo), int(hi - lo)
                kept = out.reshape(-1, *out.shape[2:])[positions[lo:hi] - start * n]
            if raw:
                results.append(kept)
            else:
                results.extend(format_outputs(self.task, kept, lengths[first : first + k], self.labels))
            t_infer += seconds
            t_output += time.perf_counter() - t2
            self._metrics.batch(k, batch.shape[0], n)

        starts = range(0, groups.shape[0], self.max_batch)
        if len(starts) == 1:
            finish(0, groups, timed_infer(groups))
        else:
            pipeline = self._pipeline(backend)
            in_flight: deque[tuple[int, np.ndarray, Future]] = deque()
            try:
                for start in starts:
                    batch = groups[start : start + self.max_batch]
                    in_flight.append((start, batch, pipeline.submit(timed_infer, batch)))
                    if len(in_flight) == 2:  # batch k+1 is queued on the device before batch k is unpacked
                        done_start, done_batch, future = in_flight.popleft()
                        finish(done_start, done_batch, future.result())
                while in_flight:
                    done_start, done_batch, future = in_flight.popleft()
                    finish(done_start, done_batch, future.result())
            finally:
                wait([future for *_, future in in_flight])  # on an error: the backend is idle before we return
        self._metrics.add(
            nv_inference_compute_input_duration_us=t_input * 1e6,
            nv_inference_compute_infer_duration_us=t_infer * 1e6,
            nv_inference_compute_output_duration_us=t_output * 1e6,
        )
        if raw:
            if not results:
                per_instance = self.manifest.data["outputs"][0]["shape"][2:]  # [B, N, *per_instance]
                return np.zeros((0, *per_instance), dtype=np.float32)
            return results[0] if len(results) == 1 else np.concatenate(results)
        return results

    def _pipeline(self, backend: Backend) -> ThreadPoolExecutor:
        """The one thread that runs `backend` for multi-batch calls (a backend is never run by two threads)."""
        with self._start_lock:
            pool = self._pipelines.get(id(backend))
            if pool is None:
                pool = self._pipelines[id(backend)] = ThreadPoolExecutor(1, thread_name_prefix="muxdeploy-pipeline")
            return pool

    # ---- asynchronous --------------------------------------------------------------------------
    def submit(
        self,
        instance: Any,
        deadline: float | None = None,
        timeout: float | None = None,
        request_key: Any = None,
    ) -> Future:
        """Queue one instance; its Future resolves to its result (or its own error).

        deadline: seconds from now by which it must be dispatched, else DeadlineExceeded.
        timeout: seconds to block while the queue is full before raising QueueFull (default submit_timeout).
        request_key: with isolation="request", instances submitted with the same key (e.g. one per HTTP
            request) may share a group; None makes this instance a request of its own.
        An invalid instance returns an already-failed Future and never enters a group.
        """
        self._check_open()
        future: Future = Future()
        try:
            row, length = self.encoder.encode_one(instance)
        except InstanceError as exc:
            future.set_exception(exc)
            self._metrics.add(nv_inference_request_failure=1, muxdeploy_invalid_instances=1)
            return future
        batcher = self._ensure_batcher()
        expires = None if deadline is None else time.monotonic() + float(deadline)
        owner = next(self._request_keys) if request_key is None else ("key", request_key)
        request = Request(row, length, future, expires, owner=owner)
        batcher.put(request, self.submit_timeout if timeout is None else float(timeout))
        return future

    def submit_many(
        self, instances: Sequence[Any] | np.ndarray, deadline: float | None = None, timeout: float | None = None
    ) -> list[Future]:
        """Queue many instances at once (validated in one vectorized pass): one Future per instance, in order.

        Same rules as submit(); an instance that finds no queue room within `timeout` gets a Future failed
        with QueueFull instead of an exception, so the others still run.
        """
        self._check_open()
        with gc_paused():  # tens of thousands of Futures: the cyclic GC would rescan them again and again
            return self._submit_many(instances, deadline, timeout)

    def _submit_many(
        self, instances: Sequence[Any] | np.ndarray, deadline: float | None, timeout: float | None
    ) -> list:
        enc = self.encoder.encode(instances)
        futures: list[Future] = [Future() for _ in range(len(enc.ids))]
        expires = None if deadline is None else time.monotonic() + float(deadline)
        owner = next(self._request_keys)  # one call, one request
        requests = []
        for i, future in enumerate(futures):
            reason = enc.errors.get(i)
            if reason:
                future.set_exception(InstanceError(f"instance {i}: {reason}"))
            else:
                requests.append(Request(enc.ids[i], int(enc.lengths[i]), future, expires, owner=owner))
        if enc.errors:
            bad = len(enc.errors)
            self._metrics.add(nv_inference_request_failure=bad, muxdeploy_invalid_instances=bad)
        if requests:
            batcher = self._ensure_batcher()
            left = batcher.put_many(requests, self.submit_timeout if timeout is None else float(timeout))
            for r in left:
                r.future.set_exception(QueueFull(f"queue full ({self.queue_size} instances); retry later"))
            if left:
                self._metrics.add(nv_inference_request_failure=len(left))
        return futures

    def _execute(self, backend: Backend, requests: Sequence[Request]) -> list[Any]:
        rows = np.stack([r.row for r in requests])
        lengths = np.fromiter((r.length for r in requests), dtype=np.int64, count=len(requests))
        owners = None
        if self.isolation == "fillers":
            owners = np.arange(len(requests))
        elif self.isolation == "request":
            # owners numbered by first appearance; a stable sort brings each request's instances together
            index: dict[Any, int] = {}
            owners = np.fromiter((index.setdefault(r.owner, len(index)) for r in requests), np.int64, len(requests))
            order = np.argsort(owners, kind="stable")
            with gc_paused():
                ordered = self._run_rows(backend, rows[order], lengths[order], owners=owners[order])
            results: list[Any] = [None] * len(requests)
            for k, i in enumerate(order.tolist()):
                results[i] = ordered[k]
            return results
        with gc_paused():
            return self._run_rows(backend, rows, lengths, owners=owners)

    def _ensure_batcher(self) -> DynamicBatcher:
        if self._batcher is not None:
            return self._batcher
        with self._start_lock:
            if self._batcher is None:
                self._check_open()
                backends: list[Backend] = []
                try:
                    for _ in range(self.workers):
                        backends.append(self._factory().activate())
                except BaseException:
                    for b in backends:
                        b.deactivate()
                    raise
                self._batcher = DynamicBatcher(
                    self._execute,
                    backends,
                    self.max_batch * self.num_instances,
                    self.max_wait_ms,
                    self.queue_size,
                    self._metrics,
                    self.preferred_batch_sizes,
                )
        return self._batcher

    # ---- lifecycle -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("the runtime is closed; create a new MuxRuntime")

    def close(self) -> None:
        """Drain the submit queue and in-flight batches, then free every backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._start_lock:
            if self._batcher is not None:
                self._batcher.close()
        with self._predict_lock:
            for pool in self._pipelines.values():
                pool.shutdown()
            self._backend.deactivate()

    def __enter__(self) -> MuxRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
