"""Helpers for the serving tests (importable: tests/ is on the path)."""

from __future__ import annotations

import numpy as np


def random_instances(
    count: int, seed: int, seq_len: int = 8, low: int = 8, high: int = 64, min_len: int = 1
) -> list[list[int]]:
    """Random content-token instances of random lengths min_len..seq_len (ids in [low, high))."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(min_len, seq_len + 1))).tolist() for _ in range(count)]


def check_answers(pairs: list[tuple[list[int], list[int]]], max_slipped: int = 2) -> None:
    """Retrieval answers vs their own instances (>= 3 tokens each, so a misrouted answer cannot pass).

    The trained oracle is ~99.9% per token: an answer may differ from its instance in one token, and at
    most `max_slipped` answers may; an answer that is another request's tokens differs in most positions.
    """
    slipped = 0
    for got, want in pairs:
        assert len(want) >= 3 and len(got) == len(want), (got, want)
        diff = sum(a != b for a, b in zip(got, want, strict=True))
        assert diff <= 1, f"answer {got} is not its request's {want}"
        slipped += diff
    assert slipped <= max_slipped, f"{slipped} answers slipped a token"
