"""The Python API: export, build_engine, validate and bench. The CLI commands of the same names call these.

    import muxdeploy

    exported = muxdeploy.export("ckpt.pt", n=10, out="mux_model")           # -> ExportResult (.manifest)
    built = muxdeploy.build_engine("mux_model", precision="int8", calib_data="dev.jsonl")  # -> BuildResult
    report = muxdeploy.validate("mux_model", "dev.jsonl")                     # -> ValidationReport
    speed = muxdeploy.bench("mux_model", seconds=2)                           # -> BenchReport

Errors are the CLI's one-line messages as exceptions (muxdeploy.core.errors): UserInputError for bad input
(exit code 2 on the command line), MissingExtra (a UserInputError) when an install extra is missing, MuxError
for the rest. Nothing is printed unless `echo` is given (e.g. `echo=print`). Importing this module loads nothing
heavy; each call imports what it needs, after checking that it is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.extras import require

if TYPE_CHECKING:
    from muxdeploy.build import BuildResult
    from muxdeploy.evaluation.benchmark import BenchReport
    from muxdeploy.evaluation.tuning import TuneReport
    from muxdeploy.evaluation.validation import ValidationReport
    from muxdeploy.exporters.onnx import ExportResult

__all__ = ["bench", "build_engine", "export", "tune", "validate", "validate_all"]

Echo = Callable[[str], None]


def _silent(_: str) -> None:
    """The default `echo`: say nothing."""


def export(
    checkpoint: str | Path,
    n: int,
    out: str | Path = "mux_model",
    *,
    seq_len: int | None = None,
    max_batch: int = 64,
    opset: int = 18,
    task: str | None = None,
    instance_batch: bool = False,
    echo: Echo | None = None,
) -> ExportResult:
    """Export a checkpoint to a bundle: model.onnx + muxdeploy.json (+ tokenizer.json), parity-checked.

    `checkpoint`: a muxdeploy ckpt.pt or a DataMUX / MUX-PLM save_pretrained directory. `n`: instances per
    group, the checkpoint's num_instances. `seq_len`: tokens per instance (default: the length the model was
    trained at). `max_batch`: largest batch of N-slot groups the graph takes. `opset`: 18..22. `task`: the head
    of a reference directory (default from its config.json). `instance_batch`: also write
    model.instance_batch.onnx (input_ids [M, L]). The ONNX must match PyTorch within 1e-4 on onnxruntime, else
    ParityError. Needs the [export] extra and onnxruntime ([cpu] or [gpu]).
    """
    require("muxdeploy export", "torch", "onnx", "onnxscript", "onnxruntime")
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    say = echo or _silent
    say(f"loading {checkpoint}")
    ckpt = load_checkpoint(checkpoint, task=task, seq_len=seq_len)
    if ckpt.kind == "vision":
        shape = "image {}x{}x{}".format(*ckpt.config.image_shape)
    else:
        shape = f"L={seq_len or ckpt.config.seq_len}"
    say(f"exporting N={n} {shape} (opset {opset}, batch 1..{max_batch})")
    return export_bundle(
        ckpt.export_spec(), n, out, seq_len=seq_len, max_batch=max_batch, opset=opset, instance_batch=instance_batch
    )


def build_engine(
    bundle: str | Path = "mux_model",
    precision: str = "fp32",
    *,
    calib_data: str | Path | None = None,
    calib_size: int = 512,
    calib_method: str = "max",
    quantizer: str = "onnxruntime",
    quantize_mux_demux: bool = False,
    backend: str = "auto",
    tensorrt_module: str = "tensorrt",
    target: str | None = None,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace: int | None = None,
    timing_cache: str | Path | None = None,
    builder_opt_level: int | None = None,
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
    hardware_compat: str | None = None,
    dla_core: int | None = None,
    allow_gpu_fallback: bool = False,
    bench_seconds: float = 2.0,
    threads: int = 1,
    seed: int = 0,
    progress: bool = False,
    debug: bool = False,
    echo: Echo | None = None,
) -> BuildResult:
    """Write the bundle's typed ONNX of `precision` with its measured accuracy, then an engine or a fused graph.

    `precision`: fp32, fp16 (mixed, LayerNorm kept FP32), int8 or fp8 (Q/DQ, calibrated on `calib_data`: JSONL
    with "text" or "input_ids" per line, or .npz; `calib_size` groups, `calib_method` max|entropy|percentile,
    `quantizer` onnxruntime|modelopt, `quantize_mux_demux` to quantize the mux/demux too). The typed graph is
    compared with model.onnx on held-out groups and the figures go into the manifest.
    `backend="auto"` (default): TensorRT when its module is installed here, else onnxruntime (the echo says which
    and why); `"tensorrt"` fails before any work when TensorRT is missing.
    `backend="tensorrt"`: a strongly typed TensorRT engine, built with `tensorrt_module` (tensorrt or
    tensorrt-rtx), `target` (jetpack6: checks and settings for JetPack 6's TensorRT 10.3), the trtexec-named
    options `min_batch`/`opt_batch`/`max_batch`, `workspace` (MiB),
    `timing_cache`, `builder_opt_level`, `version_compatible`, `exclude_lean_runtime`, `hardware_compat`,
    `dla_core`, `allow_gpu_fallback`. `backend="onnxruntime"`: onnxruntime's fused graph instead, timed on the CPU
    for `bench_seconds` per graph on `threads` threads (0 s: not timed). `seed`: the instance-to-group assignment.
    Each file is written atomically and recorded as soon as it is done. A typed graph or the onnxruntime backend
    needs onnx ([export]) and onnxruntime; an FP32 TensorRT engine needs TensorRT only.
    """
    import importlib.util

    from muxdeploy.build import BuildRequest, BuildResult, one_precision, run_build
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.runtimes.backends.engine_facts import TRT_FLAVORS

    trt_here = any(importlib.util.find_spec(m) for m in TRT_FLAVORS.get(tensorrt_module, ()))
    for_ort = backend == "onnxruntime" or (backend == "auto" and not trt_here)
    if one_precision([precision]) != "fp32" or for_ort:
        # onnxruntime's transformer optimizer (the fused graph for --backend onnxruntime) imports torch
        needs = ("onnx", "onnxruntime", "torch") if for_ort and precision != "fp8" else ("onnx", "onnxruntime")
        require("muxdeploy build-engine", *needs)
    request = BuildRequest(
        bundle=bundle,
        precisions=[precision],
        calib_data=None if calib_data is None else str(calib_data),
        calib_size=calib_size,
        calib_method=calib_method,
        quantizer=quantizer,
        quantize_mux_demux=quantize_mux_demux,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace=workspace,
        timing_cache=None if timing_cache is None else str(timing_cache),
        builder_opt_level=builder_opt_level,
        version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime,
        hardware_compat=hardware_compat,
        dla_core=dla_core,
        allow_gpu_fallback=allow_gpu_fallback,
        backend=backend,
        tensorrt_module=tensorrt_module,
        target=target,
        bench_seconds=bench_seconds,
        threads=threads,
        seed=seed,
        debug=debug,
        progress=progress,
    )
    written = run_build(request, echo=echo or _silent)
    return BuildResult(Path(bundle), request.precision(), Manifest.load(bundle), written)


def validate(
    bundle: str | Path,
    data: str | Path,
    *,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    progress: bool = False,
) -> ValidationReport:
    """Score the deployed bundle and its PyTorch checkpoint on labelled `data`, overall and per slot.

    `data`: JSONL, {"text" or "input_ids", "label"} per line (token tasks: "labels", or "tokens" and "tags").
    `checkpoint`: default the manifest's model.source. `backend`/`precision` pick the deployed artifact as
    MuxRuntime does. `limit`: the first K instances only. Needs the [export] extra (the PyTorch side).
    """
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be >= 1, got {limit}")
    require("muxdeploy validate", "torch")
    from muxdeploy.evaluation.validation import validate as run_validation

    return run_validation(bundle, data, checkpoint, backend, precision, limit, progress=progress)


def validate_all(
    bundle: str | Path,
    data: str | Path,
    *,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    precisions: list[str] | None = None,
    limit: int | None = None,
    reference: bool = True,
    progress: bool = False,
) -> list[ValidationReport]:
    """`validate` for several precisions of one bundle (default: every one `backend` runs here), one report each.

    The PyTorch checkpoint runs once for all; `reference=False` skips it (no checkpoint or torch needed: only
    the deployed side's scores and group-mate figures are reported).
    """
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be >= 1, got {limit}")
    if reference:
        require("muxdeploy validate", "torch")
    from muxdeploy.evaluation.validation import validate_all as run_all

    return run_all(bundle, data, checkpoint, backend, precisions, limit, progress=progress, reference=reference)


def bench(
    bundle: str | Path = "mux_model",
    *,
    backend: str = "auto",
    precision: str = "auto",
    seconds: float = 5.0,
    scenario: str = "both",
    concurrency: int = 64,
    instances_per_step: int | None = None,
    max_wait_ms: float = 2.0,
    workers: int = 1,
    progress: bool = False,
    echo: Echo | None = None,
) -> BenchReport:
    """Instances/s and latency percentiles of the bundle through the runtime, as perf_analyzer and MLPerf measure.

    `scenario`: "offline" (predict() on `instances_per_step` instances per call, default one full batch),
    "server" (`concurrency` producers, each with one instance in flight; the batcher waits up to `max_wait_ms`,
    `workers` engine workers) or "both"; `seconds` each. `echo` gets the header line and each scenario's block
    as it finishes. Runs on the base install with a backend.
    """
    from muxdeploy.evaluation.benchmark import BenchReport, check_options, format_scenario, offline, server
    from muxdeploy.runtimes.runtime import MuxRuntime

    check_options(seconds, concurrency, instances_per_step, scenario)
    say = echo or _silent
    with MuxRuntime(bundle, backend=backend, precision=precision, max_wait_ms=max_wait_ms, workers=workers) as rt:
        report = BenchReport(str(bundle), rt.backend_name, rt.num_instances, rt.max_batch)
        k = instances_per_step if instances_per_step is not None else rt.max_batch * rt.num_instances
        say(f"bench {bundle}: {rt.backend_name}, N={rt.num_instances}, max batch {rt.max_batch} groups")
        if scenario in ("offline", "both"):
            report.offline = offline(rt, k, seconds, progress=progress)
            say(format_scenario(report.offline))
        if scenario in ("server", "both"):
            report.server = server(rt, concurrency, seconds, progress=progress)
            say(format_scenario(report.server))
    return report


def tune(
    bundles: list[str | Path],
    data: str | Path,
    *,
    max_drop: float = 2.0,
    p99_ms: float | None = None,
    backends: list[str] | None = None,
    seconds: float = 2.0,
    concurrency: int = 16,
    limit: int | None = None,
    progress: bool = False,
    echo: Echo | None = None,
) -> TuneReport:
    """Measure every (N, precision, backend) of one task's bundles here and recommend the fastest within budget.

    Each setting is scored on labelled `data` (validate's deployed side, with the group-mate figures) and
    timed (offline instances/s for `seconds`; p99 per instance in the server scenario at `concurrency`).
    `max_drop`: accuracy points allowed below the baseline (the N=1 bundle at FP32, else the best setting).
    `p99_ms`: latency budget (None: none). `backends`: default every backend runnable here. The report's
    `recommended` is None when nothing fits. Runs on the base install with a backend (no torch).
    """
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be >= 1, got {limit}")
    from muxdeploy.evaluation.tuning import measure, recommend

    if max_drop < 0 or (p99_ms is not None and p99_ms <= 0):
        recommend([], max_drop, p99_ms)  # raises the one-line reason before anything is measured
    rows = measure(bundles, data, backends, seconds, concurrency, limit, progress, echo or _silent)
    report = recommend(rows, max_drop, p99_ms, str(data))
    report.settings = {"seconds": seconds, "concurrency": concurrency, "backends": sorted({r.backend for r in rows})}
    return report
