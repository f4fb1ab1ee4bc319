"""THE ORACLE: a trained retrieval bundle returns every instance's own tokens, through predict and submit.

A swapped, lost or shifted instance shows up as a wrong token sequence. The tiny model is ~99.9%
accurate per token, so each answer may differ from its instance in at most one position, and at
least 98% of answers must be exact; a swap (random content, 57 possible ids) fails both.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from muxdeploy.core.errors import InstanceError
from muxdeploy.runtimes.runtime import MuxRuntime
from muxdeploy.training import retrieval

N, L = 4, 8


def content_instances(count: int, seed: int, min_len: int = 3, max_len: int = L) -> list[list[int]]:
    low, high = retrieval.retrieval_token_range(retrieval.tiny_retrieval_config(N, L))
    rng = np.random.default_rng(seed)
    return [x.tolist() for x in retrieval.random_token_instances(rng, count, max_len, low, high, min_len)]


def assert_oracle(instances: list[list[int]], answers: list[dict]) -> None:
    """Every answer is its own instance's tokens (cut to L), up to one slip; >= 98% exact."""
    assert len(answers) == len(instances)
    exact = 0
    for i, (inst, ans) in enumerate(zip(instances, answers, strict=True)):
        want = np.asarray(inst[:L])
        got = np.asarray(ans["token_ids"])
        assert got.shape == want.shape, f"instance {i}: {len(got)} tokens back for {len(want)}"
        wrong = int((got != want).sum())
        assert wrong <= 1, f"instance {i} got {got.tolist()}, not its own {want.tolist()}"
        exact += wrong == 0
    assert exact >= 0.98 * len(instances), f"only {exact}/{len(instances)} exact"


def test_predict_returns_every_instance_in_order(retrieval_bundle: Path) -> None:
    instances = content_instances(301, seed=1)  # 301: the last group holds 3 fillers
    instances[7] = instances[7] + instances[8]  # longer than L: truncated to its first L tokens
    with MuxRuntime(retrieval_bundle, max_batch=5) as rt:
        assert_oracle(instances, rt.predict(instances))


def test_submit_from_16_threads_each_future_gets_its_own_tokens(retrieval_bundle: Path) -> None:
    instances = content_instances(2000, seed=2)
    futures: list = [None] * len(instances)

    def producer(k: int) -> None:
        for i in range(k, len(instances), 16):
            futures[i] = rt.submit(instances[i])

    with MuxRuntime(retrieval_bundle, workers=2, max_wait_ms=2.0, queue_size=512) as rt:
        threads = [threading.Thread(target=producer, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers = [f.result(timeout=60) for f in futures]
        metrics = rt.metrics()
    assert_oracle(instances, answers)
    assert metrics["nv_inference_request_success"] == 2000 and metrics["nv_inference_request_failure"] == 0


def test_bad_instances_never_poison_their_group_mates(retrieval_bundle: Path) -> None:
    good = content_instances(40, seed=3)
    bad = [[], [5, 64], [1.5, 2.0], "text", [[7, 8]], [-1, 9]]
    mixed: list = []
    for i, g in enumerate(good):
        mixed.append(g)
        if i % 7 == 0:
            mixed.append(bad[(i // 7) % len(bad)])
    with MuxRuntime(retrieval_bundle, max_wait_ms=5.0) as rt:
        futures = [rt.submit(x) for x in mixed]
        answers = [f.exception(10) or f.result() for f in futures]
        predicted = rt.predict(mixed, on_error="return")
        in_bulk = [f.exception(10) or f.result() for f in rt.submit_many(mixed)]
    for got in (answers, predicted, in_bulk):
        ok = [a for a in got if not isinstance(a, InstanceError)]
        assert sum(isinstance(a, InstanceError) for a in got) == len(mixed) - len(good)
        assert_oracle(good, ok)
