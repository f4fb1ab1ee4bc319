"""Packer regressions found by the runtime's tests."""

from __future__ import annotations

from muxdeploy.runtimes.packing import encode_token_instances


def test_nested_lists_are_refused_not_crashed() -> None:
    # one nested instance alone used to pass the fast path's dtype check and crash in the fancy indexing
    enc = encode_token_instances([[[7, 8]]], 8, 0, 64)
    assert enc.errors == {0: "has shape (1, 2); a token-id instance is one flat sequence of ints"}
    enc = encode_token_instances([[5, 6], [[7, 8]], [9]], 8, 0, 64)
    assert list(enc.errors) == [1] and enc.ids[2, 0] == 9


def test_scatter_with_and_without_truncation_matches_a_plain_loop() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for max_len in (6, 11):  # all fit in L=6 / some are truncated
        instances = [rng.integers(1, 50, size=int(rng.integers(0, max_len + 1))).tolist() for _ in range(200)]
        enc = encode_token_instances(instances, 6, 0, 50, filler=np.full(6, 7, dtype=np.int32))
        for i, inst in enumerate(instances):
            want = [7] * 6 if not inst else (inst[:6] + [0] * 6)[:6]
            assert enc.ids[i].tolist() == want
