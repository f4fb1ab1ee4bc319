"""Timing helpers shared by the GPU benchmarks: step timers, a budgeted measurement, a kernel profile by category."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class Timer:
    """Times k back-to-back steps: CUDA events on torch's stream, or perf_counter around synchronous work."""

    def __init__(self, torch_mod: Any, cuda: bool, events: bool) -> None:
        self.torch = torch_mod
        self.cuda = cuda
        self.events = events and cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, step: Callable[[int], Any], start: int, k: int) -> float:
        """Seconds per step over k steps starting at input index `start`."""
        if self.events:
            begin = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            self.sync()
            begin.record()
            for i in range(k):
                step(start + i)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0 / k
        self.sync()
        t0 = time.perf_counter()
        for i in range(k):
            step(start + i)
        self.sync()
        return (time.perf_counter() - t0) / k


def measure(
    step: Callable[[int], Any], timer: Timer, budget_s: float, warmup: int = 3, min_rep: int = 5, max_rep: int = 30
) -> dict[str, Any]:
    """Warm up, size repeats of ~0.1 s to the time budget, return the median/p10/p90 step time in ms."""
    for i in range(warmup):
        step(i)
    timer.sync()
    probe = timer.run(step, warmup, 2)
    k = max(1, int(0.1 / max(probe, 1e-6)))
    reps = min(max_rep, max(min_rep, int(budget_s / max(k * probe, 1e-6))))
    times = sorted(timer.run(step, r * k, k) for r in range(reps))
    return {
        "step_ms": statistics.median(times) * 1e3,
        "p10_ms": times[int(0.1 * (len(times) - 1))] * 1e3,
        "p90_ms": times[math.ceil(0.9 * (len(times) - 1))] * 1e3,
        "steps_per_repeat": k,
        "repeats": reps,
    }


KERNEL_CATEGORIES = (
    ("attention (fused)", ("flash", "fmha", "mha", "attention", "efficient_attention", "cutlass_fmha")),
    ("softmax", ("softmax",)),
    ("layernorm (incl. skip/embed)", ("layer_norm", "layernorm", "layernormalization", "skiplayer", "embedlayer")),
    (
        "matmul/gemm",
        ("gemm", "cutlass", "xmma", "cublas", "matmul", "sm90_", "sm80_", "addmm", "bmm", "linear", "nvjet"),
    ),
    ("gelu", ("gelu",)),
    ("transpose/copy/concat", ("transpose", "permute", "copy", "memcpy", "cat", "concat", "contiguous", "slice")),
    ("embedding/gather", ("gather", "index", "embedding")),
)


def kernel_category(name: str) -> str:
    """Coarse bucket of a GPU kernel (or CPU op) name, for the profile summary."""
    low = name.lower()
    for label, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other (elementwise, reductions, ...)"


def profile_steps(torch: Any, step: Callable[[int], Any], cuda: bool, steps: int = 5) -> dict[str, Any]:
    """Kernel time by category and the top kernels over `steps` steps (torch.profiler: CUPTI also sees
    onnxruntime's kernels, which run in this process), and GPU busy time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    step(0)
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    rows = []
    for e in prof.key_averages():
        us = (
            (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0))
            if cuda
            else e.self_cpu_time_total
        )
        if us and us > 0:
            rows.append((e.key, us / 1e3 / steps, e.count / steps))
    busy = sum(r[1] for r in rows)
    cats: dict[str, float] = {}
    for name, ms, _ in rows:
        cats[kernel_category(name)] = cats.get(kernel_category(name), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return {
        "wall_ms_per_step": round(wall * 1e3, 3),
        "busy_ms_per_step": round(busy, 3),
        "by_category": {
            k: {"ms": round(v, 3), "pct": round(100 * v / busy, 1) if busy else None}
            for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "top": [{"name": n[:140], "ms": round(ms, 3), "calls": round(c, 1)} for n, ms, c in rows[:20]],
        "what": "GPU kernel time (CUPTI)" if cuda else "CPU op self time",
    }


def random_sets(g: int, n: int, seq_len: int, vocab: int, sets: int, seed: int) -> list[np.ndarray]:
    """`sets` input sets [g, n, seq_len] int32 of random ids in [min(1000, vocab/2), vocab): never pad, never 0."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab // 2)
    return [rng.integers(low, vocab, size=(g, n, seq_len), dtype=np.int64).astype(np.int32) for _ in range(sets)]


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
