"""Throughput and latency of a bundle through the runtime, in perf_analyzer / MLPerf terms.

- offline scenario (MLPerf "Offline"): `predict` on K instances per call, back to back; throughput is
  instances/s, latency is the time of one call (every instance of a call finishes with it).
- server scenario (perf_analyzer's concurrency mode): C producer threads, each with one request in
  flight: `submit` one instance, wait for its result, submit the next. Latency is per instance, from
  submit to result, so it includes the dynamic batcher's wait (max_wait_ms) and queueing.
- N sweep: the same architecture (a preset with random weights) exported at each N and measured
  offline at the same instances per step; N=1 is the unmultiplexed baseline.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest

NUM_SETS = 4
SCENARIOS = ("offline", "server", "both")


@dataclass
class ScenarioResult:
    """One measured scenario."""

    scenario: str
    instances: int
    seconds: float
    instances_per_s: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    latency_kind: str
    instances_per_step: int | None = None
    concurrency: int | None = None
    batch_fill_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    """What `muxdeploy bench` measured on one bundle: the runtime that ran it and each scenario's figures."""

    bundle: str
    backend: str
    num_instances: int
    max_batch: int
    offline: ScenarioResult | None = None
    server: ScenarioResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints)."""
        out: dict[str, Any] = {
            "bundle": self.bundle,
            "backend": self.backend,
            "num_instances": self.num_instances,
            "max_batch": self.max_batch,
        }
        for res in (self.offline, self.server):
            if res is not None:
                out[res.scenario] = res.to_dict()
        return out


def percentiles(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds (nearest-rank percentiles, as perf_analyzer reports)."""
    if not values_s:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan}
    v = np.sort(np.asarray(values_s, dtype=np.float64)) * 1e3

    def rank(p: float) -> float:
        return float(v[max(0, math.ceil(p / 100 * len(v)) - 1)])

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "mean": float(v.mean())}


def synthetic_instances(manifest: Manifest, count: int, seed: int = 0) -> list[Any]:
    """Random instances of realistic shape: token ids of lengths L/2..L avoiding special ids, or images."""
    rng = np.random.default_rng(seed)
    spec = manifest.data["inputs"][0]
    if np.dtype(spec["dtype"]).kind == "f":
        shape = tuple(int(d) for d in spec["shape"][2:])
        return list(rng.standard_normal((count, *shape)).astype(np.float32))
    length = manifest.seq_len
    vocab = manifest.vocab_size or 1000
    low = min(1000, vocab // 2)
    lengths = rng.integers(max(1, length // 2), length + 1, size=count)
    return [rng.integers(low, vocab, size=int(k)).tolist() for k in lengths]


def _progress(seconds: float, desc: str, enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=round(seconds, 1), desc=desc, unit="s", leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total}s")


def _advance(bar: Any, start: float, seconds: float) -> None:
    """Move a seconds-based progress bar to the elapsed time (redraws only when the shown value changes)."""
    if bar is not None:
        value = round(min(seconds, time.perf_counter() - start), 1)
        if value != bar.n:
            bar.n = value
            bar.refresh()


def offline(
    runtime: Any, instances_per_step: int, seconds: float, warmup: int = 2, progress: bool = False, seed: int = 0
) -> ScenarioResult:
    """predict() on `instances_per_step` instances per call until `seconds` have passed (after warm-up)."""
    if instances_per_step < 1:
        raise UserInputError(f"--instances-per-step must be >= 1, got {instances_per_step}")
    sets = [synthetic_instances(runtime.manifest, instances_per_step, seed + i) for i in range(NUM_SETS)]
    for i in range(warmup):
        runtime.predict(sets[i % NUM_SETS])
    steps: list[float] = []
    start = time.perf_counter()
    with _progress(seconds, "offline", progress) as bar:
        while not steps or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            runtime.predict(sets[len(steps) % NUM_SETS])
            steps.append(time.perf_counter() - t0)
            _advance(bar, start, seconds)
    elapsed = time.perf_counter() - start
    done = len(steps) * instances_per_step
    p = percentiles(steps)
    return ScenarioResult(
        "offline", done, elapsed, done / elapsed, p["p50"], p["p90"], p["p99"], p["mean"],
        "per predict() call of instances_per_step instances", instances_per_step=instances_per_step,
    )  # fmt: skip


def server(runtime: Any, concurrency: int, seconds: float, progress: bool = False, seed: int = 0) -> ScenarioResult:
    """`concurrency` producer threads, each submit() -> result() in a closed loop, for `seconds`."""
    if concurrency < 1:
        raise UserInputError(f"--concurrency must be >= 1, got {concurrency}")
    pool = synthetic_instances(runtime.manifest, max(256, concurrency * 4), seed)
    for fut in [runtime.submit(x) for x in pool[: min(len(pool), concurrency)]]:  # warm-up: start the workers
        fut.result()
    before = runtime.metrics()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce(k: int) -> None:
        mine = latencies[k]
        i = k
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                runtime.submit(pool[i % len(pool)]).result()
                mine.append(time.perf_counter() - t0)
                i += concurrency
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=produce, args=(k,), daemon=True) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    with _progress(seconds, "server", progress) as bar:
        while time.perf_counter() - start < seconds and not stop.is_set():
            time.sleep(min(0.1, seconds / 20))
            _advance(bar, start, seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    flat = [x for lat in latencies for x in lat]
    p = percentiles(flat)
    fill = _fill_ratio(before, runtime.metrics())
    return ScenarioResult(
        "server", len(flat), elapsed, len(flat) / elapsed, p["p50"], p["p90"], p["p99"], p["mean"],
        "per instance, submit() to result", concurrency=concurrency, batch_fill_ratio=fill,
    )  # fmt: skip


def check_options(seconds: float, concurrency: int, instances_per_step: int | None, scenario: str = "both") -> None:
    """Raise UserInputError for a measurement option out of range (before anything is loaded)."""
    if seconds <= 0:
        raise UserInputError(f"--seconds must be > 0, got {seconds}")
    if concurrency < 1:
        raise UserInputError(f"--concurrency must be >= 1, got {concurrency}")
    if instances_per_step is not None and instances_per_step < 1:
        raise UserInputError(f"--instances-per-step must be >= 1, got {instances_per_step}")
    if scenario not in SCENARIOS:
        raise UserInputError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")


def _fill_ratio(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Real instances / slots run during the measurement (Triton's nv_inference_count over our slot counter)."""
    slots = after.get("muxdeploy_slots", 0) - before.get("muxdeploy_slots", 0)
    used = after.get("nv_inference_count", 0) - before.get("nv_inference_count", 0)
    return used / slots if slots else None


# ---- N sweep ---------------------------------------------------------------------------------------
def export_preset_bundle(preset: str, n: int, seq_len: int, max_batch: int, out_dir: Path, seed: int = 0) -> Path:
    """Export a random-weight model of `preset` at N=n into out_dir (through ckpt.pt, as a user would)."""
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.models import build_model
    from muxdeploy.models.presets import preset_config

    config = preset_config(preset, n, seq_len=seq_len)
    model = build_model(config)
    model.init_weights(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "ckpt.pt"
    save_checkpoint(ckpt, model.eval(), meta={"note": f"random weights, preset {preset}, for benchmarks"})
    bundle = out_dir / "mux_model"
    export_bundle(load_checkpoint(ckpt).export_spec(), n, bundle, max_batch=max_batch)
    return bundle


def sweep_n(
    ns: Sequence[int],
    preset: str,
    seq_len: int,
    instances_per_step: int,
    seconds: float,
    backend: str,
    precision: str,
    workdir: Path | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Export and measure offline throughput at each N; rows carry the speed-up vs N=1 when N=1 was measured."""
    from muxdeploy.runtimes.runtime import MuxRuntime

    if not ns or any(n < 1 for n in ns):
        raise UserInputError(f"--sweep-n needs positive N values, got {list(ns)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="muxbench-", dir=workdir) as tmp:
        iterator: Any = ns
        if progress:
            from tqdm import tqdm

            iterator = tqdm(ns, desc="sweep N", unit="N", leave=False)
        for n in iterator:
            groups = -(-instances_per_step // n)
            t0 = time.perf_counter()
            bundle = export_preset_bundle(preset, n, seq_len, groups, Path(tmp) / f"n{n}")
            export_s = time.perf_counter() - t0
            with MuxRuntime(bundle, backend=backend, precision=precision, max_batch=groups) as rt:
                res = offline(rt, instances_per_step, seconds)
                row = {"n": n, "groups_per_step": groups, "export_s": round(export_s, 1),
                       "backend": rt.backend_name, **res.to_dict()}  # fmt: skip
            rows.append(row)
            if on_row:
                on_row(row)
    base = next((r["instances_per_s"] for r in rows if r["n"] == 1), None)
    for r in rows:
        r["speedup_vs_n1"] = r["instances_per_s"] / base if base else None
    return rows


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
    """The speed-up table."""
    lines = [f"{'N':>4}{'groups/step':>13}{'instances/s':>14}{'vs N=1':>9}{'step p50 ms':>13}{'step p99 ms':>13}"]
    for r in rows:
        up = "-" if r.get("speedup_vs_n1") is None else f"{r['speedup_vs_n1']:.2f}x"
        lines.append(
            f"{r['n']:>4}{r['groups_per_step']:>13}{r['instances_per_s']:>14,.0f}{up:>9}"
            f"{r['latency_ms_p50']:>13.2f}{r['latency_ms_p99']:>13.2f}"
        )
    return "\n".join(lines)


def format_scenario(res: ScenarioResult) -> str:
    """One scenario as a short block."""
    what = (
        f"{res.instances_per_step} instances per predict()"
        if res.scenario == "offline"
        else f"concurrency {res.concurrency}"
    )
    lines = [
        f"{res.scenario} ({what}): {res.instances_per_s:,.1f} instances/s "
        f"({res.instances:,} instances in {res.seconds:.1f} s)",
        f"  latency {res.latency_kind}: p50 {res.latency_ms_p50:.2f} ms  p90 {res.latency_ms_p90:.2f} ms  "
        f"p99 {res.latency_ms_p99:.2f} ms  mean {res.latency_ms_mean:.2f} ms",
    ]
    if res.batch_fill_ratio is not None:
        lines.append(f"  batch fill ratio {res.batch_fill_ratio:.2f}")
    return "\n".join(lines)


def require_matplotlib(path: str | Path) -> Any:
    """matplotlib.pyplot (Agg backend), or a one-line error; also checks the plot's directory exists."""
    if not Path(path).parent.is_dir():
        raise UserInputError(f"--plot: directory {Path(path).parent} does not exist; create it or choose another path")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserInputError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    return plt


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Draw instances/s and speed-up vs N into a PNG (written atomically). Needs matplotlib."""
    plt = require_matplotlib(path)
    from muxdeploy.core.fsutil import atomic_path

    path = Path(path)
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [r["instances_per_s"] for r in rows], "o-", label="measured")
    base = next((r["instances_per_s"] for r in rows if r["n"] == 1), None)
    if base:
        ax.plot(ns, [base * n for n in ns], "--", color="gray", label="ideal (N x N=1)")
    ax.set_xlabel("N (instances multiplexed per pass)")
    ax.set_ylabel("instances / s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
