"""Isolated packing: an instance's answer does not depend on what else is sent with it (MuxRuntime isolation=...).

A tiny random model with its weight matrices scaled up (so group-mates move its logits visibly): the "none"
cases show the effect is real and the isolated cases show it gone, on a real ONNX run by onnxruntime.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.runtimes.packing import pack_groups, pack_isolated
from muxdeploy.runtimes.runtime import MuxRuntime

N = 4


@pytest.fixture(scope="module")
def tiny_bundle(groupmate_bundle: Path) -> Path:
    """The bundle whose group-mates visibly move its logits (tests/conftest.py)."""
    return groupmate_bundle


def instances(count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 1000, size=int(rng.integers(3, 16))).tolist() for _ in range(count)]


def test_pack_isolated_keeps_owner_runs_apart() -> None:
    rows = np.arange(7)[:, None] * np.ones((1, 2), dtype=np.int32) + 10
    filler = np.zeros(2, dtype=np.int32)
    groups, pos = pack_isolated(rows, 3, filler, np.array([0, 0, 0, 0, 1, 2, 2]))
    # owner 0: 4 rows -> 2 groups; owner 1: 1 group; owner 2: 1 group
    assert groups.shape == (4, 3, 2)
    assert pos.tolist() == [0, 1, 2, 3, 6, 9, 10]
    flat = groups.reshape(-1, 2)
    np.testing.assert_array_equal(flat[pos], rows)
    assert (np.delete(flat, pos, axis=0) == 0).all()  # every other slot holds the filler
    one_each, pos1 = pack_isolated(rows, 3, filler, np.arange(7))
    assert one_each.shape == (7, 3, 2) and pos1.tolist() == [0, 3, 6, 9, 12, 15, 18]
    same, _ = pack_isolated(rows, 3, filler, np.zeros(7))  # one owner: FIFO packing
    np.testing.assert_array_equal(same, pack_groups(rows, 3, filler))


def test_unknown_isolation_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(UserInputError, match="unknown isolation 'solo'"):
        MuxRuntime(tiny_bundle, isolation="solo")


def test_fillers_mode_gives_an_instance_the_same_answer_whatever_else_is_sent(tiny_bundle: Path) -> None:
    x = [17, 230, 41, 9]
    contexts = [[], instances(3, 1), instances(9, 2), instances(5, 3)]
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu") as shared:
        mixed = [shared.predict_array([x, *c])[0] for c in contexts]
    # without isolation the group-mates change x's logits (else this test could not fail)
    assert min(float(np.abs(m - mixed[0]).max()) for m in mixed[1:]) > 1e-4
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu", isolation="fillers") as alone:
        got = [alone.predict_array([*c[:2], x, *c[2:]])[min(2, len(c))] for c in contexts]
        results = alone.predict([x, *contexts[2]])
        alone_logits = alone.predict_array([x])[0]
    for g in got:
        np.testing.assert_allclose(g, got[0], atol=1e-6)
    np.testing.assert_allclose(results[0]["logits"], got[0], atol=1e-6)
    # and it is x packed with N-1 fillers: what a plain runtime gives x sent alone
    np.testing.assert_allclose(mixed[0], got[0], atol=1e-6)
    np.testing.assert_allclose(alone_logits, got[0], atol=1e-6)


def test_fillers_mode_through_submit_while_others_are_queued(tiny_bundle: Path) -> None:
    x = [17, 230, 41, 9]
    others = instances(11, 4)
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu") as plain:
        expected = plain.predict_array([x])[0]
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu", isolation="fillers", max_wait_ms=50) as rt:
        futures = [rt.submit(o) for o in others[:5]] + [rt.submit(x)] + [rt.submit(o) for o in others[5:]]
        results = [f.result(timeout=30) for f in futures]
        assert rt.metrics()["muxdeploy_batch_fill_ratio"] <= 1 / N + 1e-9  # one instance per group
    np.testing.assert_allclose(results[5]["logits"], expected, atol=1e-6)


def test_request_mode_packs_only_a_requests_own_instances_together(tiny_bundle: Path) -> None:
    a, b = instances(3, 5), instances(6, 6)
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu") as plain:
        alone_a, alone_b = plain.predict_array(a), plain.predict_array(b)
        together = plain.predict_array([*a, *b])  # a's group takes b's first instance
    assert float(np.abs(together[:3] - alone_a).max()) > 1e-4
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu", isolation="request", max_wait_ms=200) as rt:
        fa = rt.submit_many(a)
        fb = rt.submit_many(b)
        # submit() with a shared key is one request; interleaved with another key, they still stay apart
        key_c, key_d = object(), object()
        c, d = instances(2, 7), instances(2, 8)
        fcd = [rt.submit(c[0], request_key=key_c), rt.submit(d[0], request_key=key_d)]
        fcd += [rt.submit(c[1], request_key=key_c), rt.submit(d[1], request_key=key_d)]
        got_a = np.stack([f.result(timeout=30)["logits"] for f in fa])
        got_b = np.stack([f.result(timeout=30)["logits"] for f in fb])
        got_c = np.stack([fcd[i].result(timeout=30)["logits"] for i in (0, 2)])
        got_d = np.stack([fcd[i].result(timeout=30)["logits"] for i in (1, 3)])
    np.testing.assert_allclose(got_a, alone_a, atol=1e-6)
    np.testing.assert_allclose(got_b, alone_b, atol=1e-6)
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu") as plain:
        np.testing.assert_allclose(got_c, plain.predict_array(c), atol=1e-6)
        np.testing.assert_allclose(got_d, plain.predict_array(d), atol=1e-6)


def test_fillers_mode_costs_throughput(tiny_bundle: Path) -> None:
    rows = instances(256, 9)
    rates = {}
    for mode in ("none", "fillers"):
        with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu", isolation=mode, intra_op_threads=1) as rt:
            rt.predict_array(rows)
            best = min(_timed(lambda rt=rt: rt.predict_array(rows)) for _ in range(3))
            rates[mode] = len(rows) / best
    assert rates["fillers"] < rates["none"]  # N-1 of every N slots carry fillers


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0
