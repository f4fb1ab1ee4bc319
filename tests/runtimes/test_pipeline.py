"""predict/predict_array over several batches: the backend runs on one pipeline thread, batch k+1 queued before
batch k is unpacked; order, errors and the backend's one-thread-at-a-time rule hold."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import BackendError
from muxdeploy.runtimes.backends import TensorSpec
from muxdeploy.runtimes.backends.base import Backend
from muxdeploy.runtimes.backends.ort_cuda import batch_buckets
from muxdeploy.runtimes.runtime import MuxRuntime


class EchoBackend(Backend):
    """Outputs each slot's first token id as its logits; records threads and overlapping calls."""

    name = "echo"

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__(
            TensorSpec("input_ids", np.dtype(np.int32), (4, 16)), TensorSpec("logits", np.dtype(np.float32), (4, 3)), 2
        )
        self.threads: set[int] = set()
        self.active = 0
        self.overlapped = False
        self.calls = 0
        self.fail_on_call = fail_on_call

    def _activate_impl(self) -> None:
        pass

    def _deactivate_impl(self) -> None:
        pass

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        self.active += 1
        self.overlapped |= self.active > 1
        self.threads.add(threading.get_ident())
        self.calls += 1
        try:
            time.sleep(0.002)
            if self.calls == self.fail_on_call:
                raise BackendError("injected")
            return np.repeat(feed[:, :, :1].astype(np.float32), 3, axis=2)
        finally:
            self.active -= 1


def test_multi_batch_calls_keep_order_on_one_thread(tiny_bundle: Path) -> None:
    backend = EchoBackend()
    ids = np.arange(1, 23 * 16 + 1, dtype=np.int32).reshape(23, 16) % 900 + 5  # 23 instances: 6 groups, 3 batches
    with MuxRuntime(tiny_bundle, backend=lambda: backend, max_batch=2) as rt:
        out = rt.predict_array(ids)
        dicts = rt.predict([row.tolist() for row in ids])
    np.testing.assert_array_equal(out[:, 0], ids[:, 0].astype(np.float32))
    assert [d["logits"][0] for d in dicts] == ids[:, 0].astype(np.float32).tolist()
    assert backend.calls == 6 and not backend.overlapped
    assert len(backend.threads) == 1 and threading.get_ident() not in backend.threads


def test_an_error_in_one_batch_fails_the_call_after_the_backend_is_idle(tiny_bundle: Path) -> None:
    backend = EchoBackend(fail_on_call=2)
    ids = np.full((23, 16), 7, dtype=np.int32)
    with MuxRuntime(tiny_bundle, backend=lambda: backend, max_batch=2) as rt:
        with pytest.raises(BackendError, match="injected"):
            rt.predict_array(ids)
        assert backend.active == 0
        assert rt.predict_array(ids).shape == (23, 3)  # the runtime lives on


def test_batch_buckets() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(128) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)
