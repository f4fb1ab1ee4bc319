"""Accuracy of a typed graph against the FP32 ONNX on held-out groups, and onnxruntime CPU throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.data import CalibrationSet
from runtimes.packing import iter_batches, unpack_groups


def cpu_session(path: str | Path, threads: int | None = None, basic_opt: bool = False) -> Any:
    """An onnxruntime CPU session (quiet logs; `threads` intra-op threads when given).

    `basic_opt` limits onnxruntime's online graph optimizations to the basic level: the right setting for
    graphs already fused offline, and required for FP16 fused graphs, which crash onnxruntime 1.32's CPU
    session at the default (all) level.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if basic_opt:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_groups(session: Any, groups: np.ndarray, batch: int = 8) -> np.ndarray:
    """Outputs of `session` over [G, N, L] groups, run in batches of `batch` groups."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: feed})[0] for feed in iter_batches(groups, batch)]
    return np.concatenate(outs, axis=0).astype(np.float32)


def compare(reference: np.ndarray, candidate: np.ndarray, calib: CalibrationSet) -> dict[str, Any]:
    """Max abs diff, argmax agreement and (with labels) task accuracy of both, over real held-out instances."""
    m = calib.held_out_instances
    ref = unpack_groups(reference, m)
    got = unpack_groups(candidate, m)
    ref_cls, got_cls = ref.argmax(-1), got.argmax(-1)
    facts: dict[str, Any] = {
        "max_abs_diff": float(np.max(np.abs(ref - got))),
        "argmax_agreement": float(np.mean(ref_cls == got_cls)),
        "held_out_instances": int(m),
        "held_out_groups": int(calib.held_out_groups.shape[0]),
        "held_out_disjoint": calib.disjoint,
        "reference": "onnxruntime-cpu fp32 model.onnx",
    }
    if calib.held_out_labels is not None and ref_cls.ndim == 1:
        labels = unpack_groups(calib.held_out_labels, m)
        facts["accuracy_fp32"] = float(np.mean(ref_cls == labels))
        facts["accuracy"] = float(np.mean(got_cls == labels))
    return facts


def evaluate(
    reference_onnx: str | Path, candidate_onnx: str | Path, calib: CalibrationSet, basic_opt: bool = False
) -> dict[str, Any]:
    """Run both graphs on the held-out groups (onnxruntime CPU) and compare them."""
    ref = run_groups(cpu_session(reference_onnx), calib.held_out_groups)
    got = run_groups(cpu_session(candidate_onnx, basic_opt=basic_opt), calib.held_out_groups)
    return compare(ref, got, calib)


def throughput(
    path: str | Path, groups: np.ndarray, batch: int, threads: int, seconds: float = 3.0, basic_opt: bool = False
) -> float:
    """Instances per second of onnxruntime CPU over `groups` in batches of `batch` groups (after one warm-up pass)."""
    session = cpu_session(path, threads=threads, basic_opt=basic_opt)
    name = session.get_inputs()[0].name
    feeds = list(iter_batches(groups, batch))
    session.run(None, {name: feeds[0]})
    done, start = 0, time.perf_counter()
    while True:
        for feed in feeds:
            session.run(None, {name: feed})
            done += feed.shape[0] * feed.shape[1]
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed
