"""The background dynamic batcher behind `MuxRuntime.submit` (its rules 1-8: docs/RUNTIME.md, "submit()").

Triton's dynamic batcher, counted in instances: a bounded FIFO queue; a free worker takes a full
batch (max_batch * N instances) or the largest preferred size that is queued, otherwise waits until
the OLDEST queued instance has waited `max_wait_ms` and then takes what is there. Expired
instances fail with DeadlineExceeded before packing; a cancelled future leaves the queue at once.
Each worker owns one backend (execution context, stream, buffers). A failing batch fails only its
own futures; the worker then probes its backend with one group of zeros, and retires when even that
fails (a backend that cannot recover: a lost session or device). With no worker left, queued and new
instances fail at once with BackendError instead of waiting. `close()` stops intake, drains the queue
and joins the workers.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np

from muxdeploy.core.errors import BackendError, DeadlineExceeded, MuxError, QueueFull
from muxdeploy.runtimes.backends.base import Backend
from muxdeploy.runtimes.metrics import Metrics

EXPIRED = "the instance's deadline passed before it was dispatched; give it more time or lower the load"
NO_WORKER = "no engine worker is left (every worker's backend failed its health probe); restart the runtime"


class RuntimeClosed(MuxError):
    """submit() after close()."""


@dataclass(eq=False)
class Request:
    """One validated instance waiting for a slot. Compared by identity."""

    row: np.ndarray
    length: int
    future: Future
    deadline: float | None = None  # time.monotonic() by which it must be dispatched
    enqueued: float = 0.0


Execute = Callable[[Backend, Sequence[Request]], list[Any]]


class DynamicBatcher:
    """Queue + scheduler + worker threads. `execute(backend, requests)` packs, runs and unpacks one batch."""

    def __init__(
        self,
        execute: Execute,
        backends: Sequence[Backend],
        full_batch: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: Metrics,
        preferred_sizes: Sequence[int] = (),
    ) -> None:
        self._execute = execute
        self._full = int(full_batch)
        self._max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self._capacity = int(queue_size)
        self._preferred = sorted({int(p) for p in preferred_sizes if 0 < int(p) < self._full}, reverse=True)
        self._metrics = metrics
        self._queue: deque[Request] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._with_deadline = 0
        self._closing = False
        self._live = len(backends)  # workers whose backend still runs
        self._threads = [
            threading.Thread(target=self._worker, args=(b,), name=f"muxdeploy-worker-{i}", daemon=True)
            for i, b in enumerate(backends)
        ]
        for t in self._threads:
            t.start()

    # ---- producers -----------------------------------------------------------------------------
    def put(self, request: Request, timeout: float) -> None:
        """Enqueue; block up to `timeout` seconds while the queue is full, then raise QueueFull."""
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is closed; create a new MuxRuntime to submit more")
            if not self._live:
                raise BackendError(NO_WORKER)
            if len(self._queue) >= self._capacity:
                end = time.monotonic() + timeout
                while len(self._queue) >= self._capacity:
                    left = end - time.monotonic()
                    if left <= 0:
                        self._metrics.add(muxdeploy_queue_full=1)
                        raise QueueFull(
                            f"queue full ({self._capacity} instances) for {timeout:g}s; retry later, "
                            "or raise queue_size / add workers"
                        )
                    self._space.wait(left)
                    if self._closing:
                        raise RuntimeClosed("the runtime was closed while this submit waited for queue space")
            request.enqueued = time.monotonic()
            self._queue.append(request)
            if request.deadline is not None:
                self._with_deadline += 1
            # Wake a worker only when this instance changes what it should do: the queue was empty (start
            # the max_wait timer), a full or preferred batch is now ready, no waiting is wanted, or a new
            # deadline may come before the timer. Otherwise the waiting worker's timer already covers it
            # (waking it for every instance costs a lock and GIL hand-off per submit).
            n = len(self._queue)
            if n == 1 or n >= self._full or n in self._preferred or not self._max_wait or request.deadline is not None:
                self._work.notify()
        request.future.add_done_callback(functools.partial(self._on_done, request))

    def put_many(self, requests: Sequence[Request], timeout: float) -> list[Request]:
        """Enqueue in order as space allows, blocking up to `timeout` seconds in all; returns the requests
        that did not fit (the caller fails them with QueueFull)."""
        done = 0
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is closed; create a new MuxRuntime to submit more")
            if not self._live:
                raise BackendError(NO_WORKER)
            end = time.monotonic() + timeout
            while done < len(requests):
                room = self._capacity - len(self._queue)
                if room <= 0:
                    left = end - time.monotonic()
                    if left <= 0 or self._closing:
                        break
                    self._space.wait(left)
                    continue
                now = time.monotonic()
                chunk = requests[done : done + room]
                for r in chunk:
                    r.enqueued = now
                    if r.deadline is not None:
                        self._with_deadline += 1
                self._queue.extend(chunk)
                done += len(chunk)
                self._work.notify()
        for r in requests[:done]:
            r.future.add_done_callback(functools.partial(self._on_done, r))
        if done < len(requests):
            self._metrics.add(muxdeploy_queue_full=len(requests) - done)
        return list(requests[done:])

    def _on_done(self, request: Request, future: Future) -> None:
        """A future cancelled while queued frees its slot at once."""
        if not future.cancelled():
            return
        with self._lock:
            try:
                self._queue.remove(request)
            except ValueError:
                pass  # already taken by a worker, which will skip it
            else:
                if request.deadline is not None:
                    self._with_deadline -= 1
                self._space.notify()
        self._metrics.add(muxdeploy_cancelled=1)

    def pending(self) -> int:
        """Instances queued now."""
        with self._lock:
            return len(self._queue)

    # ---- scheduler -----------------------------------------------------------------------------
    def _pop(self, k: int) -> list[Request]:
        taken = [self._queue.popleft() for _ in range(k)]
        if self._with_deadline:
            self._with_deadline -= sum(r.deadline is not None for r in taken)
        self._space.notify(k)
        if self._queue:
            self._work.notify()
        return taken

    def _pop_expired(self, now: float) -> list[Request]:
        expired = [r for r in self._queue if r.deadline is not None and r.deadline <= now]
        if expired:
            self._queue = deque(r for r in self._queue if r.deadline is None or r.deadline > now)
            self._with_deadline -= len(expired)
            self._space.notify(len(expired))
        return expired

    def _next_deadline(self) -> float | None:
        return min((r.deadline for r in self._queue if r.deadline is not None), default=None)

    def _next(self) -> tuple[list[Request] | None, list[Request]]:
        """(batch to run or None when closed and drained, expired requests to fail)."""
        with self._lock:
            while True:
                now = time.monotonic()
                if self._with_deadline:
                    expired = self._pop_expired(now)
                    if expired:
                        return [], expired
                n = len(self._queue)
                timeout: float | None = None
                if n >= self._full:
                    return self._pop(self._full), []
                if n:
                    fit = next((p for p in self._preferred if p <= n), None)
                    if fit:
                        return self._pop(fit), []
                    timeout = self._queue[0].enqueued + self._max_wait - now
                    if self._closing or timeout <= 0:
                        return self._pop(n), []
                elif self._closing:
                    return None, []
                if self._with_deadline:
                    nearest = self._next_deadline()
                    if nearest is not None:
                        timeout = nearest - now if timeout is None else min(timeout, nearest - now)
                self._work.wait(timeout)

    # ---- workers -------------------------------------------------------------------------------
    def _worker(self, backend: Backend) -> None:
        try:
            while True:
                batch, expired = self._next()
                for r in expired:
                    self._fail(r, DeadlineExceeded(EXPIRED), deadline=True)
                if batch is None:
                    return
                if batch and not self._run(backend, batch):
                    self._retire()
                    return
        except BaseException:  # the thread itself dies (not a batch failure): its backend serves no more
            self._retire()
            raise
        finally:
            backend.deactivate()

    def _run(self, backend: Backend, batch: list[Request]) -> bool:
        """Run one batch; False when it failed and the backend failed its probe too (the worker must retire)."""
        now = time.monotonic()
        live: list[Request] = []
        for r in batch:
            if r.deadline is not None and r.deadline <= now:
                self._fail(r, DeadlineExceeded(EXPIRED), deadline=True)
            elif r.future.set_running_or_notify_cancel():
                live.append(r)
        if not live:
            return True
        self._metrics.add(nv_inference_queue_duration_us=sum(now - r.enqueued for r in live) * 1e6)
        try:
            results = self._execute(backend, live)
        except BaseException as exc:  # the batch that hit the error fails, the worker lives on if it can
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            error = exc if isinstance(exc, BackendError) else BackendError(f"{backend.name} failed on a batch: {first}")
            self._metrics.add(muxdeploy_backend_failures=1)
            for r in live:
                self._fail(r, error)
            if not isinstance(exc, Exception):
                raise
            return self._probe(backend)
        done = time.monotonic()
        for r, result in zip(live, results, strict=True):
            r.future.set_result(result)
        self._metrics.add(
            nv_inference_request_success=len(live),
            nv_inference_request_duration_us=sum(done - r.enqueued for r in live) * 1e6,
        )
        return True

    @staticmethod
    def _probe(backend: Backend) -> bool:
        """True when the backend still runs one group of zeros (after a failed batch: was it the batch or us?)."""
        spec = backend.input_spec
        try:
            backend.infer(np.zeros((1, *spec.shape), dtype=spec.dtype))
        except Exception:
            return False
        return True

    def _retire(self) -> None:
        """One worker less; the last one to go fails everything still queued (nobody would run it)."""
        with self._lock:
            self._live -= 1
            orphans: list[Request] = []
            if not self._live:
                orphans, self._queue = list(self._queue), deque()
                self._with_deadline = 0
                self._space.notify_all()
        self._metrics.add(muxdeploy_workers_retired=1)
        for r in orphans:
            self._fail(r, BackendError(NO_WORKER))

    def _fail(self, request: Request, error: BaseException, deadline: bool = False) -> None:
        try:
            request.future.set_exception(error)
        except InvalidStateError:
            return  # cancelled meanwhile: nothing to report
        self._metrics.add(
            nv_inference_request_failure=1,
            muxdeploy_deadline_exceeded=int(deadline),
            nv_inference_request_duration_us=(time.monotonic() - request.enqueued) * 1e6,
        )

    # ---- shutdown ------------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Stop intake, run everything queued and in flight, join the workers."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
            self._space.notify_all()
        for t in self._threads:
            t.join(timeout)
