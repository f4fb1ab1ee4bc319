"""Helpers for the serving tests (importable: tests/ is on the path)."""

from __future__ import annotations

import numpy as np


def random_instances(count: int, seed: int, seq_len: int = 8, low: int = 8, high: int = 64) -> list[list[int]]:
    """Random content-token instances of random lengths 1..seq_len (ids in [low, high))."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(1, seq_len + 1))).tolist() for _ in range(count)]
