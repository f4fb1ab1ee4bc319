"""What `muxdeploy build-engine` does: typed ONNX with measured accuracy, then a TensorRT engine or an ORT graph;
and `build_instance_engine`, the instance-batched engine `export-triton --build-engine` serves.

Order matters for "nothing half-written": every input is validated before anything is written; each
file is written atomically; the manifest is saved after each artifact, so a later failure (TensorRT
missing, a build error) leaves a consistent bundle holding what was finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from muxdeploy.calibration.data import CALIB_METHODS, CalibrationSet, build_calibration_set, synthetic_set
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.extras import require
from muxdeploy.core.manifest import (
    GROUPED,
    INSTANCES,
    MANIFEST_NAME,
    PRECISIONS,
    REFERENCE_ONNX,
    ROLE_ORT,
    ROLE_REFERENCE,
    ROLE_TYPED,
    Manifest,
    engine_name,
    instance_onnx_name,
    onnx_name,
    ort_onnx_name,
)

if TYPE_CHECKING:
    from muxdeploy.exporters.tensorrt import EngineOptions, TrtApi

BACKENDS = ("tensorrt", "onnxruntime")


def one_precision(chosen: Sequence[str]) -> str:
    """The one precision of a build from the precisions asked for (fp32 when none), validated."""
    wanted = {p.lower() for p in chosen}
    unknown = sorted(wanted - set(PRECISIONS))
    if unknown:
        raise UserInputError(f"unknown precision {unknown[0]!r}; use --fp16, --int8 or --precision fp32|fp16|int8")
    if len(wanted) > 1:
        raise UserInputError(f"pick one precision per build, got {', '.join(sorted(wanted))}")
    return wanted.pop() if wanted else "fp32"


@dataclass
class BuildRequest:
    """Everything the command line can ask for."""

    bundle: str | Path
    precisions: list[str] = field(default_factory=list)
    calib_data: str | None = None
    calib_size: int = 512
    calib_method: str = "max"
    quantizer: str = "onnxruntime"
    quantize_mux_demux: bool = False
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace: int | None = None
    timing_cache: str | None = None
    builder_opt_level: int | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compat: str | None = None
    dla_core: int | None = None
    allow_gpu_fallback: bool = False
    backend: str = "tensorrt"
    tensorrt_module: str = "tensorrt"
    bench_seconds: float = 2.0
    threads: int = 1
    seed: int = 0
    debug: bool = False
    progress: bool = True

    def precision(self) -> str:
        """The one precision asked for (fp32 when none), validated."""
        return one_precision(self.precisions)


@dataclass
class BuildResult:
    """What a build wrote: its precision, the bundle's manifest after it, and the manifest entry of each new file."""

    bundle: Path
    precision: str
    manifest: Manifest
    artifacts: dict[str, dict[str, Any]]


def _validate(req: BuildRequest) -> tuple[Manifest, str]:
    """Every check that needs no heavy work; raises UserInputError before anything is written."""
    precision = req.precision()
    if req.backend not in BACKENDS:
        raise UserInputError(f"unknown --backend {req.backend!r}; use tensorrt or onnxruntime")
    if req.calib_method not in CALIB_METHODS:
        raise UserInputError(f"unknown --calib-method {req.calib_method!r}; use one of {', '.join(CALIB_METHODS)}")
    if precision == "int8":
        from muxdeploy.calibration.int8 import check_quantizer

        check_quantizer(req.quantizer, req.calib_method)
    if req.calib_size < 1:
        raise UserInputError(f"--calib-size must be >= 1 group, got {req.calib_size}")
    manifest = Manifest.load(req.bundle)
    if not manifest.artifact_path(REFERENCE_ONNX).is_file():
        raise UserInputError(
            f"bundle {req.bundle} has no {REFERENCE_ONNX}; "
            f"re-export it with `muxdeploy export CKPT --n N -o {req.bundle}`"
        )
    if REFERENCE_ONNX in manifest.artifacts:
        manifest.verify_artifact(REFERENCE_ONNX)  # a changed or corrupted model.onnx is refused, not converted
    if precision == "int8" and not req.calib_data:
        raise UserInputError('--int8 needs --calib-data FILE (JSONL with "text" or "input_ids" per line, or .npz)')
    if req.calib_data and not Path(req.calib_data).is_file():
        raise UserInputError(f"calibration file not found: {req.calib_data}")
    if req.dla_core is not None and req.backend != "tensorrt":
        raise UserInputError("--dla-core needs --backend tensorrt")
    if req.exclude_lean_runtime and not req.version_compatible:
        raise UserInputError("--exclude-lean-runtime only applies with --version-compatible")
    from muxdeploy.exporters.tensorrt import HARDWARE_COMPAT, TRT_FLAVORS, EngineOptions, hardware_compat_name

    if req.tensorrt_module not in TRT_FLAVORS:
        raise UserInputError(f"unknown --tensorrt-module {req.tensorrt_module!r}; use {' or '.join(TRT_FLAVORS)}")

    if req.hardware_compat is not None and hardware_compat_name(req.hardware_compat) not in HARDWARE_COMPAT:
        raise UserInputError(
            f"unknown --hardware-compat {req.hardware_compat!r}; use one of {', '.join(HARDWARE_COMPAT)}"
        )
    if req.builder_opt_level is not None and not 0 <= req.builder_opt_level <= 5:
        raise UserInputError(f"--builder-opt-level must be 0..5, got {req.builder_opt_level}")
    if req.workspace is not None and req.workspace < 1:
        raise UserInputError(f"--workspace must be a positive number of MiB, got {req.workspace}")
    EngineOptions(
        min_batch=req.min_batch, opt_batch=req.opt_batch, max_batch=req.max_batch or manifest.max_batch
    ).batches()
    return manifest, precision


def _check_set(req: BuildRequest, manifest: Manifest) -> CalibrationSet:
    if req.calib_data:
        return build_calibration_set(req.calib_data, manifest, calib_size=req.calib_size, seed=req.seed)
    return synthetic_set(manifest, seed=req.seed)


def _fmt(facts: dict[str, Any]) -> str:
    parts = [f"max abs diff {facts['max_abs_diff']:.3g}", f"argmax agreement {facts['argmax_agreement']:.2%}"]
    if "accuracy" in facts:
        parts.append(f"accuracy {facts['accuracy']:.2%} (fp32 {facts['accuracy_fp32']:.2%})")
    return ", ".join(parts) + f" on {facts['held_out_instances']} held-out instances"


def run_build(req: BuildRequest, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Carry out a build request; returns the manifest entries written."""
    from muxdeploy.exporters.parity import evaluate

    manifest, precision = _validate(req)
    bundle = Path(req.bundle)
    fp32_path = manifest.artifact_path(REFERENCE_ONNX)
    checks = _check_set(req, manifest)
    written: dict[str, Any] = {}
    name = onnx_name(precision)
    if precision != "fp32":
        target = bundle / name
        if precision == "fp16":
            from muxdeploy.calibration.fp16 import DEFAULT_KEEP_FP32_OPS, write_fp16

            echo(f"converting {fp32_path} to mixed FP16 (kept in FP32: {', '.join(DEFAULT_KEEP_FP32_OPS)})")
            write_fp16(fp32_path, target)
            how: dict[str, Any] = {
                "converter": "onnxruntime.transformers.float16",
                "keep_fp32_ops": list(DEFAULT_KEEP_FP32_OPS),
            }
        else:
            from muxdeploy.calibration.int8 import DEFAULT_OP_TYPES, REGIONS, VISION_OP_TYPES

            echo(
                f"calibrating INT8 on {checks.calib_groups.shape[0]} groups of N={manifest.num_instances} "
                f"from {req.calib_data} ({req.quantizer}, {req.calib_method})"
            )
            how = _quantize(
                fp32_path,
                target,
                checks.calib_groups,
                method=req.calib_method,
                exclude=() if req.quantize_mux_demux else REGIONS,
                op_types=VISION_OP_TYPES if manifest.model_kind == "vision" else DEFAULT_OP_TYPES,
                input_name=manifest.input_name,
                progress=req.progress,
                quantizer=req.quantizer,
                debug=req.debug,
            )
        facts = evaluate(fp32_path, target, checks)
        facts["checked_on"] = checks.source
        entry = manifest.add_artifact(
            name, "onnx", precision, role=ROLE_TYPED, source=REFERENCE_ONNX, accuracy=facts, **how
        )
        manifest.data.setdefault("parity", {})[precision] = {
            k: v for k, v in facts.items() if isinstance(v, (int, float))
        }
        if precision == "int8":
            manifest.data["calibration"] = checks.summary()
        manifest.save()
        written[name] = entry
        echo(f"wrote {target}")
        echo(f"  vs FP32 ONNX: {_fmt(facts)}")
    if req.backend == "onnxruntime":
        written.update(_prepare_onnxruntime(req, manifest, precision, checks, echo))
    else:
        written.update(_build_tensorrt(req, manifest, precision, echo))
    echo(f"wrote {bundle / MANIFEST_NAME}")
    return written


def _quantize(*args: Any, debug: bool = False, **kwargs: Any) -> dict[str, Any]:
    """muxdeploy.calibration.int8.quantize_int8, showing the worker process's traceback under --debug."""
    from muxdeploy.calibration.int8 import QuantizationError, quantize_int8

    try:
        return quantize_int8(*args, **kwargs)
    except QuantizationError as exc:
        if debug and exc.detail:
            import sys

            print(exc.detail, file=sys.stderr)
        raise


def _prepare_onnxruntime(
    req: BuildRequest, manifest: Manifest, precision: str, checks: CalibrationSet, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The ORT-only fused graph beside the portable one, checked against FP32 and timed on CPU."""
    from muxdeploy.exporters.ort_optimize import contrib_ops, optimize_for_ort
    from muxdeploy.exporters.parity import evaluate
    from muxdeploy.exporters.throughput import throughput

    bundle = Path(req.bundle)
    cfg = manifest.data.get("model", {}).get("config", {})
    heads, hidden = int(cfg.get("num_attention_heads", 0)), int(cfg.get("hidden_size", 0))
    fp32_path = manifest.artifact_path(REFERENCE_ONNX)
    typed_path = manifest.artifact_path(onnx_name(precision))
    import onnx

    leaked = contrib_ops(onnx.load(str(typed_path), load_external_data=False))
    if leaked:
        raise UserInputError(
            f"{typed_path.name} holds onnxruntime-only ops {leaked}; it must stay portable for TensorRT"
        )
    name = ort_onnx_name(precision)
    if heads:
        echo(f"running onnxruntime's transformer optimizer (bert fusions, {heads} heads, width {hidden})")
    else:
        echo("running onnxruntime's graph optimizer (no attention to fuse)")
    how = optimize_for_ort(fp32_path, typed_path, bundle / name, precision, heads, hidden)
    # every artifact runs at onnxruntime's default level ("all"); our earlier FP16 fused graph crashed it there
    level = "all"
    facts = evaluate(fp32_path, bundle / name, checks, graph_opt=level)
    facts["checked_on"] = checks.source
    if req.bench_seconds > 0:
        groups = checks.held_out_groups[:64]
        batch = min(manifest.max_batch, 8)
        echo(f"timing onnxruntime CPU ({req.threads} thread(s), batch {batch} groups, {req.bench_seconds:g} s each)")
        graphs = {
            "fp32": (fp32_path, "all"),
            precision: (typed_path, "all"),
            f"{precision}-ort": (bundle / name, level),
        }
        rates = throughput(graphs, groups, batch, req.threads, req.bench_seconds * len(graphs))
        tput: dict[str, Any] = {"threads": req.threads, "batch_groups": batch, "method": "best of 5 interleaved rounds"}
        tput.update({f"{label}_instances_per_s": round(rate, 1) for label, rate in rates.items()})
        facts["throughput_cpu"] = tput
    entry = manifest.add_artifact(
        name,
        "onnx",
        precision,
        role=ROLE_ORT,
        source=typed_path.name,
        accuracy=facts,
        session_graph_optimization_level=level,
        **how,
    )
    manifest.save()
    echo(f"wrote {bundle / name}  (fused: {', '.join(f'{k} x{v}' for k, v in how['fused'].items()) or 'nothing'})")
    echo(f"  vs FP32 ONNX: {_fmt(facts)}")
    if "throughput_cpu" in facts:
        t = facts["throughput_cpu"]
        echo(
            "  CPU instances/s: "
            + ", ".join(
                f"{k[: -len('_instances_per_s')]} {v:g}" for k, v in t.items() if k.endswith("_instances_per_s")
            )
        )
    return {name: entry}


def _build_tensorrt(
    req: BuildRequest, manifest: Manifest, precision: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    """engine.<precision>.plan from the typed ONNX; stops with exit 2 when TensorRT is not installed."""
    from muxdeploy.exporters.tensorrt import EngineOptions, load_trt

    bundle = Path(req.bundle)
    api = load_trt(req.tensorrt_module)  # TensorRTMissing (exit 2) after the typed ONNX is already in place
    opts = EngineOptions(
        precision=precision,
        min_batch=req.min_batch,
        opt_batch=req.opt_batch,
        max_batch=req.max_batch or manifest.max_batch,
        workspace_mib=req.workspace,
        timing_cache=Path(req.timing_cache) if req.timing_cache else None,
        builder_opt_level=req.builder_opt_level,
        version_compatible=req.version_compatible,
        exclude_lean_runtime=req.exclude_lean_runtime,
        hardware_compat=req.hardware_compat,
        dla_core=req.dla_core,
        allow_gpu_fallback=req.allow_gpu_fallback,
    )
    src = manifest.artifact_path(onnx_name(precision))
    name = engine_name(precision, api.flavor)
    echo(f"building {name} with {api.module_name} {api.version} (batch {'/'.join(map(str, opts.batches()))})")
    entry = _record_engine(manifest, src, name, opts, api, verbose=req.debug)
    echo(f"wrote {bundle / name}  ({entry['plan_bytes']} bytes, built in {entry['build_seconds']} s)")
    cache_note = entry["build_flags"].get("timing_cache")
    if cache_note and not cache_note.startswith("ignored"):
        echo(f"wrote {cache_note}")
    elif cache_note:
        echo(f"timing cache {cache_note}")
    return {name: entry}


def _record_engine(
    manifest: Manifest, src: Path, name: str, opts: EngineOptions, api: TrtApi, verbose: bool = False, **extra: Any
) -> dict[str, Any]:
    """Build the engine `name` of the ONNX `src` into the bundle and record it (manifest saved); returns its entry."""
    from muxdeploy.exporters.tensorrt import ENGINE_FORMAT, build_engine

    facts = build_engine(src, manifest.artifact_path(name), opts, api=api, verbose=verbose)
    entry = manifest.add_artifact(name, ENGINE_FORMAT[api.flavor], opts.precision, **extra, **facts)
    manifest.save()
    return entry


def _grouped_onnx(manifest: Manifest, precision: str) -> str:
    """The bundle's grouped ONNX of `precision` (model.onnx for fp32; build-engine writes the others)."""
    names = manifest.artifacts_where(
        format="onnx", precision=precision, role=(ROLE_REFERENCE, ROLE_TYPED, None), signature=GROUPED
    )
    if not names:
        raise UserInputError(
            f"{manifest.bundle} has no {precision} ONNX; run `muxdeploy build-engine --{precision}` first "
            "(it writes the typed graph the instance-batched engine is built from)"
        )
    return names[0]


def build_instance_engine(
    bundle: str | Path,
    precision: str = "fp32",
    opt_instances: int | None = None,
    workspace_mib: int | None = None,
    tolerance: float = 1e-3,
    tensorrt_module: str = "tensorrt",
) -> tuple[str, dict[str, Any]]:
    """Wrap the bundle's `precision` ONNX for instances and build a TensorRT engine of it; record both.

    Writes model.instance_batch[.<precision>].onnx (checked against the grouped graph of the same precision
    on onnxruntime CPU) and engine.instances.<precision>[.rtx].plan (optimization profile over M: 1, opt,
    max batch * N) with "signature": "instances", which `export-triton` serves as `tensorrt_plan`.
    `tensorrt_module`: "tensorrt" or "tensorrt-rtx" (as build-engine's --tensorrt-module).
    Returns (engine file name, its manifest entry).
    """
    from muxdeploy.exporters.instance_batch import write_instance_batch
    from muxdeploy.exporters.tensorrt import EngineOptions, load_trt

    manifest = Manifest.load(bundle)
    n = manifest.num_instances
    source = _grouped_onnx(manifest, precision)
    wrapped = instance_onnx_name(precision)
    max_instances = manifest.max_batch * n
    if wrapped not in manifest.artifacts:
        require(f"building {wrapped}", "onnx", "onnxruntime")
        grouped = manifest.verify_artifact(source)
        facts = write_instance_batch(grouped, manifest.artifact_path(wrapped), manifest, tolerance)
        manifest.add_artifact(wrapped, "onnx", precision, source=source, **facts)
        manifest.save()
    api = load_trt(tensorrt_module)  # TensorRTMissing (exit 2) names what to install
    opt = opt_instances or min(max_instances, 16 * n)
    opts = EngineOptions(
        precision=precision, min_batch=1, opt_batch=opt, max_batch=max_instances, workspace_mib=workspace_mib
    )
    name = engine_name(precision, api.flavor, signature=INSTANCES)
    entry = _record_engine(
        manifest, manifest.artifact_path(wrapped), name, opts, api, signature=INSTANCES, max_instances=max_instances
    )
    return name, entry
