"""onnxruntime CPU throughput of bundle graphs, measured side by side (build-engine --backend onnxruntime)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import iter_batches


def throughput(
    graphs: dict[str, tuple[str | Path, str]],
    groups: np.ndarray,
    batch: int,
    threads: int,
    seconds: float = 3.0,
    rounds: int = 5,
) -> dict[str, float]:
    """Instances/s of onnxruntime CPU for each {label: (path, graph_opt)} over `groups` in batches of `batch`.

    The graphs take turns for `rounds` rounds of `seconds / rounds` each and the best round counts, so load
    from other processes on a shared machine hurts every graph alike and as little as possible.
    """
    sessions = {
        label: make_session(path, intra_op_threads=threads, graph_optimization=level)
        for label, (path, level) in graphs.items()
    }
    feeds = list(iter_batches(groups, batch))
    best = dict.fromkeys(graphs, 0.0)
    for session in sessions.values():  # warm-up
        session.run(None, {session.get_inputs()[0].name: feeds[0]})
    for _ in range(rounds):
        for label, session in sessions.items():
            name = session.get_inputs()[0].name
            done, start = 0, time.perf_counter()
            while True:
                for feed in feeds:
                    session.run(None, {name: feed})
                    done += feed.shape[0] * feed.shape[1]
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / rounds:
                    break
            best[label] = max(best[label], done / elapsed)
    return best
