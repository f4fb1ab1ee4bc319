"""`muxdeploy tune`: pick the fastest (N, precision, backend) of a task's bundles that stays within an accuracy
and a latency budget, measured on this machine.

Each bundle x backend (runnable here) x precision (built in the bundle) is scored on labelled data with the
validation code path (`validate_all`, deployed side only: the group-mate figures come with it) and timed with
the benchmark's two scenarios: offline instances/s (capacity) and the server scenario's p99 latency per
instance (closed loop, `concurrency` producers, the dynamic batcher in between). The accuracy drop is measured
in points against the baseline: the N=1 bundle's FP32 setting when an N=1 bundle is given, else the best setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from muxdeploy.core.errors import MuxError, UserInputError
from muxdeploy.core.manifest import Manifest

Echo = Callable[[str], None]


class NoSettingFits(MuxError):
    """No measured setting meets the budget (exit code 1: the measurement worked, the answer is no)."""


@dataclass
class TuneRow:
    """One measured setting."""

    bundle: str
    n: int
    precision: str
    backend: str
    metric: str
    accuracy: float
    instances_per_s: float
    p99_ms: float
    random_accuracy: float | None = None
    mixed_accuracy: float | None = None
    flip_rate: float | None = None
    isolated_instances_per_s: float | None = None
    drop_points: float = 0.0
    speedup: float = 1.0
    fits: bool = False
    why_not: str = ""


@dataclass
class TuneReport:
    """The measured table, the baseline and the recommendation (None: nothing fits)."""

    rows: list[TuneRow]
    baseline: TuneRow
    max_drop: float
    p99_ms: float | None
    data: str
    recommended: TuneRow | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json PATH` writes)."""
        return {
            "data": self.data,
            "max_drop_points": self.max_drop,
            "p99_ms_budget": self.p99_ms,
            "settings": self.settings,
            "baseline": asdict(self.baseline),
            "recommended": None if self.recommended is None else asdict(self.recommended),
            "rows": [asdict(r) for r in self.rows],
        }


def backends_here() -> list[str]:
    """The runtime backends this machine can run: onnxruntime CPU, onnxruntime CUDA, TensorRT (with a GPU)."""
    from muxdeploy.core.extras import installed
    from muxdeploy.runtimes.backends import tensorrt_importable
    from muxdeploy.runtimes.backends.engine_facts import current_gpu
    from muxdeploy.runtimes.backends.onnxruntime import cuda_available

    found = []
    if installed("onnxruntime"):
        found.append("onnxruntime-cpu")
        if cuda_available():
            found.append("onnxruntime-cuda")
    if tensorrt_importable() and current_gpu() is not None:
        found.append("tensorrt")
    return found


def _check_bundles(bundles: Sequence[str | Path]) -> list[Manifest]:
    """Manifests of the bundles; they must hold one task with the same labels (else the drop means nothing)."""
    if not bundles:
        raise UserInputError("give at least one bundle: muxdeploy tune BUNDLE... --data dev.jsonl")
    manifests = [Manifest.load(b) for b in bundles]
    first = manifests[0]
    for b, m in zip(bundles, manifests, strict=True):
        if m.task != first.task or m.labels != first.labels:
            raise UserInputError(
                f"{b} is a {m.task} model with labels {m.labels}, {bundles[0]} a {first.task} model with labels "
                f"{first.labels}; tune compares bundles of one task"
            )
    return manifests


def measure(
    bundles: Sequence[str | Path],
    data: str | Path,
    backends: Sequence[str] | None = None,
    seconds: float = 2.0,
    concurrency: int = 16,
    limit: int | None = None,
    progress: bool = False,
    echo: Echo = lambda _: None,
) -> list[TuneRow]:
    """Score and time every setting (bundle x backend x precision) runnable here; one row each."""
    from muxdeploy.evaluation.benchmark import check_options, offline, server
    from muxdeploy.evaluation.validation import runnable_precisions, validate_all
    from muxdeploy.runtimes.runtime import MuxRuntime

    check_options(seconds, concurrency, None)
    manifests = _check_bundles(bundles)
    chosen = list(backends) if backends else backends_here()
    if not chosen:
        raise UserInputError("no runtime backend here; install one: pip install 'muxdeploy[cpu]'")
    rows: list[TuneRow] = []
    for bundle, manifest in zip(bundles, manifests, strict=True):
        for backend in chosen:
            try:
                precisions = runnable_precisions(manifest, backend)
            except MuxError as exc:
                echo(f"skip {bundle} on {backend}: {exc}")
                continue
            echo(f"{bundle} (N={manifest.num_instances}) on {backend}: {', '.join(precisions)}")
            reports = validate_all(
                bundle, data, backend=backend, precisions=precisions, limit=limit, progress=progress, reference=False
            )
            for report in reports:
                with MuxRuntime(bundle, backend=backend, precision=report.precision) as rt:
                    capacity = offline(rt, rt.max_batch * rt.num_instances, seconds, progress=progress)
                    latency = server(rt, concurrency, seconds, progress=progress)
                g = report.groupmates
                rows.append(
                    TuneRow(
                        bundle=str(bundle),
                        n=manifest.num_instances,
                        precision=report.precision,
                        backend=backend,
                        metric=report.metric,
                        accuracy=float(report.runtime[report.metric] or 0.0),
                        instances_per_s=capacity.instances_per_s,
                        p99_ms=latency.latency_ms_p99,
                        random_accuracy=None if g is None else g.random_accuracy,
                        mixed_accuracy=None if g is None else g.mixed_accuracy,
                        flip_rate=None if g is None else g.flip_rate,
                        isolated_instances_per_s=None if g is None else g.isolated_instances_per_s,
                    )
                )
    if not rows:
        raise UserInputError(f"none of the bundles has an artifact that {', '.join(chosen)} runs here")
    return rows


def baseline_row(rows: Sequence[TuneRow]) -> TuneRow:
    """The N=1 bundle's FP32 setting (its most accurate N=1 setting without FP32), or the most accurate setting
    when no N=1 bundle was given; ties go to the faster backend."""
    single = [r for r in rows if r.n == 1]
    pool = [r for r in single if r.precision == "fp32"] or single or list(rows)
    return max(pool, key=lambda r: (r.accuracy, r.instances_per_s))


def recommend(rows: list[TuneRow], max_drop: float, p99_ms: float | None, data: str = "") -> TuneReport:
    """Drop and speed-up against the baseline, which rows fit the budget, and the fastest one that does."""
    if max_drop < 0:
        raise UserInputError(f"--max-drop must be >= 0 points, got {max_drop}")
    if p99_ms is not None and p99_ms <= 0:
        raise UserInputError(f"--p99-ms must be > 0, got {p99_ms}")
    base = baseline_row(rows)
    for r in rows:
        r.drop_points = (base.accuracy - r.accuracy) * 100
        r.speedup = r.instances_per_s / base.instances_per_s
        why = []
        if r.drop_points > max_drop + 1e-9:
            why.append(f"drop {r.drop_points:.2f} > {max_drop:g} points")
        if p99_ms is not None and r.p99_ms > p99_ms:
            why.append(f"p99 {r.p99_ms:.2f} > {p99_ms:g} ms")
        r.fits, r.why_not = not why, "; ".join(why)
    fitting = [r for r in rows if r.fits]
    best = max(fitting, key=lambda r: r.instances_per_s) if fitting else None
    return TuneReport(rows, base, max_drop, p99_ms, data, best)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def describe(r: TuneRow) -> str:
    """'N=10 int8 onnxruntime-cpu (bundle)'."""
    return f"N={r.n} {r.precision} {r.backend} ({r.bundle})"


def format_table(report: TuneReport) -> str:
    """The table `muxdeploy tune` prints, best throughput first, with the recommendation or why none."""
    head = (
        f"{'':2}{'N':>3}  {'precision':9} {'backend':17}{'accuracy':>9}{'drop':>7}{'inst/s':>10}{'speed-up':>9}"
        f"{'p99 ms':>8} | {'random':>7}{'mixed':>8}{'flips':>7}{'isolated/s':>11}"
    )
    lines = [head]
    for r in sorted(report.rows, key=lambda r: -r.instances_per_s):
        mark = "*" if r is report.recommended else ("" if r.fits else "x")
        lines.append(
            f"{mark:2}{r.n:>3}  {r.precision:9} {r.backend:17}{r.accuracy:>9.2%}{r.drop_points:>+7.2f}"
            f"{r.instances_per_s:>10,.0f}{r.speedup:>8.1f}x{r.p99_ms:>8.2f} | {_pct(r.random_accuracy):>7}"
            f"{_pct(r.mixed_accuracy):>8}{_pct(r.flip_rate):>7}"
            f"{'-' if r.isolated_instances_per_s is None else f'{r.isolated_instances_per_s:,.0f}':>11}"
        )
    budget = f"drop <= {report.max_drop:g} points" + ("" if report.p99_ms is None else f", p99 <= {report.p99_ms:g} ms")
    lines += [
        "",
        f"baseline: {describe(report.baseline)}, {report.baseline.metric} {report.baseline.accuracy:.2%}; "
        f"drop in points, speed-up in instances/s against it; budget: {budget}",
        "inst/s: offline capacity (bench: predict() returning result dicts); p99: per instance in the server scenario; "
        "random/mixed: accuracy under random "
        "and label-mixed packing; flips: answers that change across 5 re-packings; isolated/s: --isolation fillers",
    ]
    if report.recommended is not None:
        r = report.recommended
        lines.append(
            f"recommended (*): {describe(r)}: {r.instances_per_s:,.0f} instances/s ({r.speedup:.1f}x), "
            f"{r.metric} {r.accuracy:.2%} ({r.drop_points:+.2f} points), p99 {r.p99_ms:.2f} ms"
        )
    return "\n".join(lines)


def nothing_fits(report: TuneReport) -> str:
    """The one-line reason no setting was recommended, with the closest settings."""
    closest = min(report.rows, key=lambda r: r.drop_points)
    line = (
        f"no setting meets the budget (drop <= {report.max_drop:g} points"
        + ("" if report.p99_ms is None else f", p99 <= {report.p99_ms:g} ms")
        + f"): the smallest drop is {closest.drop_points:.2f} points ({describe(closest)}, p99 {closest.p99_ms:.2f} ms)"
    )
    if report.p99_ms is not None:
        quickest = min(report.rows, key=lambda r: r.p99_ms)
        line += f", the lowest p99 {quickest.p99_ms:.2f} ms ({describe(quickest)})"
    return line + "; relax --max-drop or --p99-ms, or build another precision or N"
