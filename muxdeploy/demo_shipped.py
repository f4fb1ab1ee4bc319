"""`muxdeploy demo` on the shipped models: the DataMUX trade-off, accuracy against instances/s, per N and precision.

For each shipped sentiment model (N = 1, 2, 5, 10; `muxdeploy.shipped`): export it, build the onnxruntime FP32
graph and an INT8 one, then score the held-out sentences on every precision with `validate_all`, the code path
of `muxdeploy validate` (so the table equals `muxdeploy validate BUNDLE --data DEV --backend onnxruntime-cpu`),
group-mate figures included. No training. `muxdeploy demo --train` is the train-from-scratch path
(`muxdeploy.demo`).

INT8 calibration data: `sentiment-calib.jsonl` beside the shipped models when it is there (training-split
sentences); otherwise the held-out file's sentences (their texts only, never their labels: calibration sets
activation ranges), which the report says.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from muxdeploy.core.errors import UserInputError
from muxdeploy.shipped import CALIB_FILE

Echo = Callable[[str], None]
CALIB_GROUPS = 128
BACKEND = "onnxruntime-cpu"
PRECISIONS = ("fp32", "int8")
TIMING_ROUNDS = 3


@dataclass
class DemoRow:
    """One (N, precision) of the table: accuracy figures are validate's; speeds from `interleaved_rates`."""

    n: int
    precision: str
    accuracy: float
    instances_per_s: float
    random_packing_accuracy: float
    label_mixed_accuracy: float
    flip_rate: float
    isolated_accuracy: float
    isolated_instances_per_s: float
    pytorch_accuracy: float | None
    agreement: float | None
    backend: str
    bundle: str
    drop_points: float = 0.0
    speedup: float = 1.0


@dataclass
class ShippedDemoReport:
    """The table and what it was measured on."""

    rows: list[DemoRow]
    dev_data: str
    dev_size: int
    majority_accuracy: float
    calibration: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What `--json PATH` writes."""
        return {
            "rows": [asdict(r) for r in self.rows],
            "baseline": "N=1 fp32",
            "dev_data": self.dev_data,
            "dev_size": self.dev_size,
            "majority_accuracy": self.majority_accuracy,
            "calibration": self.calibration,
            "seconds": round(self.seconds, 1),
            "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
        }

    def table(self) -> str:
        """One aligned table: the trade-off, then what group-mates do (see docs/RUNTIME.md, 'Group-mates')."""
        head = (
            f"{'N':>3}  {'precision':9}{'accuracy':>9}{'drop':>7}{'inst/s':>9}{'speed-up':>9}  |"
            f"{'random':>8}{'mixed':>8}{'flips':>7}  |{'isolated':>9}{'inst/s':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.n:>3}  {r.precision:9}{r.accuracy:>9.2%}{r.drop_points:>+7.2f}{r.instances_per_s:>9,.0f}"
                f"{r.speedup:>8.1f}x  |{r.random_packing_accuracy:>8.2%}{r.label_mixed_accuracy:>8.2%}"
                f"{r.flip_rate:>7.1%}  |{r.isolated_accuracy:>9.2%}{r.isolated_instances_per_s:>8,.0f}"
            )
        lines += [
            "",
            f"{self.dev_size:,} held-out sentences ({self.dev_data}); majority class {self.majority_accuracy:.2%}",
            "accuracy: file order, as `muxdeploy validate`; drop (points) and speed-up against N=1 fp32; inst/s:",
            "  tokenized sentences through the runtime (pack, run, unpack), onnxruntime CPU, 1 thread, best of",
            f"  {TIMING_ROUNDS} passes interleaved over all settings (validate prints its own passes', all cores)",
            "random: mean accuracy over 5 random packings; mixed: every group holds both labels; flips: sentences",
            "  whose answer changes across the 5 packings; isolated: one sentence per group, N-1 fillers",
            "  (MuxRuntime(isolation='fillers') / serve --isolation fillers): answers independent of other traffic",
            f"INT8 calibrated on {self.calibration}",
        ]
        return "\n".join(lines)


def calibration_source(models_dir: Path, dev_data: Path) -> tuple[Path, str]:
    """The INT8 calibration file and how the report names it (see the module docstring)."""
    shipped = models_dir / CALIB_FILE
    if shipped.is_file():
        return shipped, f"{shipped.name} (training-split sentences, {CALIB_GROUPS} groups per N)"
    return dev_data, f"the held-out sentences' texts (labels unused; no {CALIB_FILE} shipped), {CALIB_GROUPS} groups"


def _rows(reports: list[Any], n: int) -> list[DemoRow]:
    rows = []
    for rep in reports:
        g = rep.groupmates
        rows.append(
            DemoRow(
                n=n,
                precision=rep.precision,
                accuracy=float(rep.runtime["accuracy"]),
                instances_per_s=g.instances_per_s,
                random_packing_accuracy=g.random_accuracy,
                label_mixed_accuracy=g.mixed_accuracy,
                flip_rate=g.flip_rate,
                isolated_accuracy=g.isolated_accuracy,
                isolated_instances_per_s=g.isolated_instances_per_s,
                pytorch_accuracy=rep.reference.get("accuracy"),
                agreement=rep.agreement,
                backend=rep.runtime_backend,
                bundle=rep.bundle,
            )
        )
    return rows


def interleaved_rates(
    bundles: dict[int, Path], instances: Sequence[Any], rounds: int = TIMING_ROUNDS
) -> dict[tuple[int, str, str], float]:
    """Instances/s of every (N, precision, isolation) on the same instances, timed in interleaved rounds.

    Every runtime is opened and warmed first, then each round times one `predict_array` pass of each in turn
    and the best pass counts: on a machine shared with other work, load that comes and goes hits every
    setting alike instead of the ones that happened to run at a busy moment. One onnxruntime thread each: the
    open sessions then hold no spinning thread pools that would slow whichever one is running.
    """
    from muxdeploy.runtimes.runtime import MuxRuntime

    with ExitStack() as stack:
        runs = {}
        for n, bundle in sorted(bundles.items()):
            for precision in PRECISIONS:
                for isolation in ("none", "fillers"):
                    options = {"precision": precision, "isolation": isolation, "intra_op_threads": 1}
                    rt = stack.enter_context(MuxRuntime(bundle, backend=BACKEND, **options))
                    ids = rt.encoder.encode(list(instances)).ids
                    rt.predict_array(ids[: 2 * rt.max_batch * n])
                    runs[(n, precision, isolation)] = (rt, ids)
        best = dict.fromkeys(runs, math.inf)
        for _ in range(rounds):
            for key, (rt, ids) in runs.items():
                start = time.perf_counter()
                rt.predict_array(ids)
                best[key] = min(best[key], time.perf_counter() - start)
    return {key: len(instances) / seconds for key, seconds in best.items()}


def run_shipped_demo(
    workdir: str | Path,
    models: dict[int, Path] | None = None,
    dev_data: str | Path | None = None,
    calib_data: str | Path | None = None,
    echo: Echo = print,
    progress: bool = True,
) -> ShippedDemoReport:
    """Export, build INT8 and validate each model (default: the shipped ones) on the held-out data; the table."""
    from muxdeploy import api
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.evaluation.labelled_data import read_labelled
    from muxdeploy.evaluation.validation import validate_all

    start = time.perf_counter()
    if models is None or dev_data is None:
        from muxdeploy.shipped import SHIPPED_DIR, shipped_dev_data, shipped_models

        models = shipped_models() if models is None else models
        dev_data = shipped_dev_data() if dev_data is None else dev_data
        models_dir = SHIPPED_DIR
    else:
        models_dir = Path(next(iter(models.values()))).parent
    dev_data = Path(dev_data)
    if 1 not in models:
        raise UserInputError(f"the demo compares against N=1; models given for N = {', '.join(map(str, models))}")
    if calib_data is None:
        calib_path, calib_note = calibration_source(models_dir, dev_data)
    else:
        calib_path, calib_note = Path(calib_data), f"{calib_data}, {CALIB_GROUPS} groups"
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserInputError(f"--workdir {workdir} exists and is not a directory; choose another path")
    workdir.mkdir(parents=True, exist_ok=True)
    stages = {"export": 0.0, "build": 0.0, "validate": 0.0, "timing": 0.0}
    rows: list[DemoRow] = []
    reports: list[Any] = []
    for k, (n, model_dir) in enumerate(sorted(models.items()), 1):
        bundle = workdir / f"sentiment-n{n}"
        echo(f"[{k}/{len(models)}] N={n}: export {model_dir.name}, build FP32 and INT8 (onnxruntime), validate")
        t0 = time.perf_counter()
        api.export(model_dir, n, out=bundle)
        t1 = time.perf_counter()
        api.build_engine(bundle, "fp32", backend="onnxruntime", bench_seconds=0)
        api.build_engine(
            bundle, "int8", calib_data=calib_path, calib_size=CALIB_GROUPS, backend="onnxruntime", bench_seconds=0
        )
        t2 = time.perf_counter()
        got = validate_all(bundle, dev_data, model_dir, backend=BACKEND, precisions=PRECISIONS, progress=progress)
        stages["export"] += t1 - t0
        stages["build"] += t2 - t1
        stages["validate"] += time.perf_counter() - t2
        reports += got
        rows += _rows(got, n)
    t3 = time.perf_counter()
    data = read_labelled(dev_data, Manifest.load(workdir / f"sentiment-n{min(models)}"))
    rates = interleaved_rates({n: workdir / f"sentiment-n{n}" for n in models}, data.instances)
    stages["timing"] = time.perf_counter() - t3
    for r in rows:
        r.instances_per_s = rates[(r.n, r.precision, "none")]
        r.isolated_instances_per_s = rates[(r.n, r.precision, "fillers")]
    base = next(r for r in rows if r.n == 1 and r.precision == "fp32")
    for r in rows:
        r.drop_points = (base.accuracy - r.accuracy) * 100
        r.speedup = r.instances_per_s / base.instances_per_s
    majority = _majority(dev_data)
    return ShippedDemoReport(
        rows=rows,
        dev_data=str(dev_data),
        dev_size=reports[0].count,
        majority_accuracy=majority,
        calibration=calib_note,
        seconds=time.perf_counter() - start,
        stage_seconds=stages,
    )


def _majority(path: Path) -> float:
    """Share of the most common label in a labelled JSONL file."""
    import json
    from collections import Counter

    labels = Counter(json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip())
    return max(labels.values()) / sum(labels.values())


def write_plot(report: ShippedDemoReport, path: str | Path) -> bool:
    """Accuracy against instances/s, one point per (N, precision), into a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from muxdeploy.core.fsutil import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for precision, marker in (("fp32", "o"), ("int8", "s")):
        pts = [r for r in report.rows if r.precision == precision]
        ax.plot([r.instances_per_s for r in pts], [r.accuracy * 100 for r in pts], marker=marker, label=precision)
        for r in pts:
            ax.annotate(f"N={r.n}", (r.instances_per_s, r.accuracy * 100), textcoords="offset points", xytext=(4, 4))
    ax.axhline(report.majority_accuracy * 100, color="grey", linestyle=":", label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("instances/s (onnxruntime CPU, 1 thread, this machine)")
    ax.set_ylabel(f"held-out accuracy, % ({report.dev_size:,} sentences)")
    ax.set_title("DataMUX: accuracy against throughput, per N")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
