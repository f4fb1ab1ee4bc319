"""MuxRuntime.submit: dynamic batching, back-pressure, deadlines, cancellation, failures, draining.

EchoBackend answers each slot with (sum of ids, first id, token count), so every future can be checked
against its own instance whatever group it landed in.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import EchoBackend, echo_expected

from muxdeploy.core.errors import BackendError, DeadlineExceeded, InstanceError, QueueFull
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.batcher import RuntimeClosed
from muxdeploy.runtimes.runtime import MuxRuntime


class Echoes:
    """A backend factory that remembers what it made (made[0] serves predict, made[1:] the workers)."""

    def __init__(self, bundle: Path, **kwargs: object) -> None:
        self.manifest = Manifest.load(bundle)
        self.kwargs = kwargs
        self.made: list[EchoBackend] = []

    def __call__(self) -> EchoBackend:
        backend = EchoBackend(self.manifest, **self.kwargs)  # type: ignore[arg-type]
        self.made.append(backend)
        return backend


def runtime(bundle: Path, factory: Echoes, **kwargs: object) -> MuxRuntime:
    return MuxRuntime(bundle, backend=factory, **kwargs)  # type: ignore[arg-type]


def test_many_threads_each_future_gets_its_own_answer(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    instances = [rng.integers(5, 1000, size=int(rng.integers(1, 25))).tolist() for _ in range(2000)]
    futures: list = [None] * len(instances)

    def producer(k: int) -> None:
        for i in range(k, len(instances), 16):
            futures[i] = rt.submit(instances[i])

    with runtime(tiny_bundle, Echoes(tiny_bundle), workers=2, max_wait_ms=1.0) as rt:
        threads = [threading.Thread(target=producer, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [f.result(timeout=30)["logits"].tolist() for f in futures]
        metrics = rt.metrics()
    assert got == [echo_expected(x) for x in instances]
    assert metrics["nv_inference_request_success"] == 2000
    assert metrics["nv_inference_count"] == 2000
    assert metrics["nv_inference_exec_count"] >= 2000 // 32
    assert metrics["muxdeploy_slots"] == metrics["muxdeploy_groups"] * 4
    assert metrics["nv_inference_queue_duration_us"] > 0


def test_bad_instance_fails_its_own_future_only(tiny_bundle: Path) -> None:
    with runtime(tiny_bundle, Echoes(tiny_bundle)) as rt:
        futures = [rt.submit(x) for x in ([5, 6], [], [7, 1000], [1.5], [8, 9, 10])]
        assert futures[1].done() and futures[2].done() and futures[3].done()  # failed at submit, never queued
        for f, match in zip(futures[1:4], ("empty", "vocabulary", "dtype"), strict=True):
            with pytest.raises(InstanceError, match=match):
                f.result()
        assert futures[0].result(5)["logits"].tolist() == echo_expected([5, 6])
        assert futures[4].result(5)["logits"].tolist() == echo_expected([8, 9, 10])
        assert rt.metrics()["muxdeploy_invalid_instances"] == 3


def test_full_queue_blocks_then_raises_queue_full(tiny_bundle: Path) -> None:
    gate = threading.Event()
    echoes = Echoes(tiny_bundle, gate=gate)
    with runtime(tiny_bundle, echoes, queue_size=8, max_wait_ms=0) as rt:
        first = rt.submit([5])
        assert echoes.made[1].started.wait(5)  # the worker holds `first`; the queue is empty again
        queued = [rt.submit([6 + i]) for i in range(8)]
        t0 = time.monotonic()
        with pytest.raises(QueueFull, match="queue full"):
            rt.submit([99], timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        gate.set()
        assert [f.result(5)["logits"][0] for f in [first, *queued]] == [5.0, *[6.0 + i for i in range(8)]]
        assert rt.metrics()["muxdeploy_queue_full"] == 1


def test_expired_deadline_fails_before_packing(tiny_bundle: Path) -> None:
    gate = threading.Event()
    echoes = Echoes(tiny_bundle, gate=gate)
    with runtime(tiny_bundle, echoes, max_wait_ms=0) as rt:
        busy = rt.submit([5])
        assert echoes.made[1].started.wait(5)
        late = rt.submit([6], deadline=0.05)
        fine = rt.submit([7], deadline=30)
        time.sleep(0.15)
        gate.set()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            late.result(5)
        assert busy.result(5)["logits"][0] == 5.0
        assert fine.result(5)["logits"][0] == 7.0
        assert rt.metrics()["muxdeploy_deadline_exceeded"] == 1
        assert rt.metrics()["nv_inference_count"] == 2


def test_deadline_fires_while_waiting_for_a_fuller_batch(tiny_bundle: Path) -> None:
    with runtime(tiny_bundle, Echoes(tiny_bundle), max_wait_ms=10_000) as rt:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            rt.submit([5], deadline=0.1).result(5)
        assert time.monotonic() - t0 < 3


def test_cancel_before_dispatch_frees_the_slot(tiny_bundle: Path) -> None:
    gate = threading.Event()
    echoes = Echoes(tiny_bundle, gate=gate)
    with runtime(tiny_bundle, echoes, max_wait_ms=0, queue_size=1) as rt:
        busy = rt.submit([5])
        assert echoes.made[1].started.wait(5)
        doomed = rt.submit([6])
        assert doomed.cancel()
        assert rt.metrics()["nv_inference_pending_request_count"] == 0
        after = rt.submit([7], timeout=0.5)  # the queue (size 1) has room again
        gate.set()
        assert busy.result(5)["logits"][0] == 5.0 and after.result(5)["logits"][0] == 7.0
        with pytest.raises(CancelledError):
            doomed.result()
        assert rt.metrics()["nv_inference_count"] == 2
        assert rt.metrics()["muxdeploy_cancelled"] == 1


def test_backend_failure_fails_exactly_its_batch_and_the_worker_lives_on(tiny_bundle: Path) -> None:
    gate = threading.Event()
    echoes = Echoes(tiny_bundle, gate=gate, fail_when=lambda feed: bool((feed == 999).any()))
    with runtime(tiny_bundle, echoes, max_wait_ms=0) as rt:
        first = rt.submit([5])
        assert echoes.made[1].started.wait(5)
        doomed = [rt.submit(x) for x in ([6], [999], [7])]  # queued together: one batch
        gate.set()
        assert first.result(5)["logits"][0] == 5.0
        for f in doomed:
            with pytest.raises(BackendError, match="injected failure"):
                f.result(5)
        assert rt.submit([8]).result(5)["logits"][0] == 8.0
        m = rt.metrics()
    assert m["muxdeploy_backend_failures"] == 1 and m["nv_inference_request_failure"] == 3


def test_full_and_preferred_batches_do_not_wait(tiny_bundle: Path) -> None:
    with runtime(tiny_bundle, Echoes(tiny_bundle), max_wait_ms=10_000, preferred_batch_sizes=[8]) as rt:
        t0 = time.monotonic()
        futures = [rt.submit([5 + i]) for i in range(8)]
        assert [f.result(5)["logits"][0] for f in futures] == [5.0 + i for i in range(8)]
        assert time.monotonic() - t0 < 3
    with runtime(tiny_bundle, Echoes(tiny_bundle), max_wait_ms=10_000, max_batch=2) as rt:
        t0 = time.monotonic()
        futures = [rt.submit([5 + i]) for i in range(8)]  # 8 = max_batch * N: a full batch
        assert [f.result(5)["logits"][0] for f in futures] == [5.0 + i for i in range(8)]
        assert time.monotonic() - t0 < 3


def test_close_drains_queue_and_refuses_new_work(tiny_bundle: Path) -> None:
    rt = runtime(tiny_bundle, Echoes(tiny_bundle), max_wait_ms=10_000)
    futures = [rt.submit([5 + i]) for i in range(10)]  # fewer than a full batch: they would wait 10 s
    t0 = time.monotonic()
    rt.close()
    assert time.monotonic() - t0 < 3
    assert all(f.done() for f in futures)
    assert [f.result()["logits"][0] for f in futures] == [5.0 + i for i in range(10)]
    with pytest.raises(RuntimeClosed):
        rt.submit([5])
    with pytest.raises(RuntimeClosed):
        rt.predict([[5]])
    rt.close()  # idempotent


def test_submit_many_validates_in_one_pass_and_keeps_each_future(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(1)
    instances: list = [rng.integers(5, 1000, size=int(rng.integers(1, 25))).tolist() for _ in range(300)]
    instances[10], instances[20] = [], [5, 1000]
    with runtime(tiny_bundle, Echoes(tiny_bundle), workers=2) as rt:
        futures = rt.submit_many(instances)
        assert len(futures) == 300
        for i, f in enumerate(futures):
            if i in (10, 20):
                with pytest.raises(InstanceError, match=f"instance {i}: "):
                    f.result(5)
            else:
                assert f.result(5)["logits"].tolist() == echo_expected(instances[i])


def test_submit_many_fails_what_finds_no_room(tiny_bundle: Path) -> None:
    gate = threading.Event()
    echoes = Echoes(tiny_bundle, gate=gate)
    with runtime(tiny_bundle, echoes, queue_size=8, max_wait_ms=0) as rt:
        first = rt.submit([5])
        assert echoes.made[1].started.wait(5)
        futures = rt.submit_many([[6 + i] for i in range(12)], timeout=0.1)
        gate.set()
        assert [f.result(5)["logits"][0] for f in futures[:8]] == [6.0 + i for i in range(8)]
        for f in futures[8:]:
            with pytest.raises(QueueFull):
                f.result(5)
        assert first.result(5)["logits"][0] == 5.0
