"""Accuracy of a typed graph against the FP32 ONNX on held-out groups, and onnxruntime CPU throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from muxdeploy.calibration.data import CalibrationSet
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import iter_batches


def run_groups(session: Any, groups: np.ndarray, batch: int = 8) -> np.ndarray:
    """Outputs of `session` over [G, N, L] groups, run in batches of `batch` groups."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: feed})[0] for feed in iter_batches(groups, batch)]
    return np.concatenate(outs, axis=0).astype(np.float32)


def evaluate(
    reference_onnx: str | Path,
    candidate_onnx: str | Path,
    calib: CalibrationSet,
    graph_opt: str = "all",
    batch: int = 8,
) -> dict[str, Any]:
    """Run both graphs on the held-out groups (onnxruntime CPU) and compare them over real instances only.

    Max abs diff, argmax agreement (per instance, or per token for token outputs) and, when the file had
    labels and the output is one class per instance, the task accuracy of both graphs. Streams batch by
    batch, so large outputs (retrieval heads over a vocabulary) never sit in memory whole. `graph_opt` is the
    candidate session's graph optimization level: FP16 graphs fused by onnxruntime's transformer optimizer
    crash onnxruntime 1.32's CPU session at "all" and run at "extended".
    """
    ref_s, got_s = make_session(reference_onnx), make_session(candidate_onnx, graph_optimization=graph_opt)
    name = ref_s.get_inputs()[0].name
    real = np.arange(calib.held_out_groups.shape[0] * calib.held_out_groups.shape[1]) < calib.held_out_instances
    real = real.reshape(calib.held_out_groups.shape[:2])
    labels = calib.held_out_labels
    worst, agree, total, right_ref, right_got, counted = 0.0, 0, 0, 0, 0, 0
    for start in range(0, calib.held_out_groups.shape[0], batch):
        feed = calib.held_out_groups[start : start + batch]
        keep = real[start : start + batch]
        ref = ref_s.run(None, {name: feed})[0][keep].astype(np.float32)
        got = got_s.run(None, {name: feed})[0][keep].astype(np.float32)
        worst = max(worst, float(np.max(np.abs(ref - got))) if ref.size else 0.0)
        ref_cls, got_cls = ref.argmax(-1), got.argmax(-1)
        agree += int(np.sum(ref_cls == got_cls))
        total += ref_cls.size
        if labels is not None and ref_cls.ndim == 1:
            lab = labels[start : start + batch][keep]
            right_ref += int(np.sum(ref_cls == lab))
            right_got += int(np.sum(got_cls == lab))
            counted += lab.size
    facts: dict[str, Any] = {
        "max_abs_diff": worst,
        "argmax_agreement": agree / max(total, 1),
        "held_out_instances": int(calib.held_out_instances),
        "held_out_groups": int(calib.held_out_groups.shape[0]),
        "held_out_disjoint": calib.disjoint,
        "reference": "onnxruntime-cpu fp32 model.onnx",
    }
    if counted:
        facts["accuracy_fp32"] = right_ref / counted
        facts["accuracy"] = right_got / counted
    return facts


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
