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

BACKENDS = ("auto", "tensorrt", "onnxruntime")
CALIBRATED = ("int8", "fp8")  # precisions quantized from --calib-data


def one_precision(chosen: Sequence[str]) -> str:
    """The one precision of a build from the precisions asked for (fp32 when none), validated."""
    wanted = {p.lower() for p in chosen}
    unknown = sorted(wanted - set(PRECISIONS))
    if unknown:
        raise UserInputError(
            f"unknown precision {unknown[0]!r}; use --fp16, --int8, --fp8 or --precision {'|'.join(PRECISIONS)}"
        )
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
    backend: str = "auto"
    tensorrt_module: str = "tensorrt"
    target: str | None = None
    bench_seconds: float = 2.0
    threads: int = 1
    seed: int = 0
    debug: bool = False
    progress: bool = True

    def precision(self) -> str:
        """The one precision asked for (fp32 when none), validated."""
        return one_precision(self.precisions)


@dataclass
class BuildPlan:
    """A validated request: the bundle's manifest, the precision, the backend chosen (and why), the TensorRT module."""

    manifest: Manifest
    precision: str
    backend: str
    reason: str
    api: TrtApi | None = None
    opts: EngineOptions | None = None


@dataclass
class BuildResult:
    """What a build wrote: its precision, the bundle's manifest after it, and the manifest entry of each new file."""

    bundle: Path
    precision: str
    manifest: Manifest
    artifacts: dict[str, dict[str, Any]]


def choose_backend(req: BuildRequest) -> tuple[str, TrtApi | None, str]:
    """(backend, TensorRT module or None, why). auto: TensorRT when its module imports here, else onnxruntime.
    An explicit --backend tensorrt without TensorRT raises TensorRTMissing here, before any work."""
    from muxdeploy.exporters.tensorrt import TRT_FLAVORS, TensorRTMissing, load_trt

    if req.tensorrt_module not in TRT_FLAVORS:
        raise UserInputError(f"unknown --tensorrt-module {req.tensorrt_module!r}; use {' or '.join(TRT_FLAVORS)}")
    if req.backend == "onnxruntime":
        return "onnxruntime", None, "--backend onnxruntime"
    if req.backend == "tensorrt" or req.target or req.dla_core is not None:
        api = load_trt(req.tensorrt_module)
        return "tensorrt", api, f"{api.module_name} {api.version}"
    try:
        api = load_trt(req.tensorrt_module)
    except TensorRTMissing:
        return (
            "onnxruntime",
            None,
            f"no {req.tensorrt_module} module here, so no TensorRT engine: preparing the bundle for onnxruntime "
            "instead (install TensorRT, e.g. pip install 'muxdeploy[tensorrt]', and rerun for an engine)",
        )
    return "tensorrt", api, f"{api.module_name} {api.version} is installed here"


def _validate(req: BuildRequest) -> BuildPlan:
    """Every check that needs no heavy work; raises UserInputError before anything is written."""
    precision = req.precision()
    if req.backend not in BACKENDS:
        raise UserInputError(f"unknown --backend {req.backend!r}; use {', '.join(BACKENDS)}")
    if req.calib_method not in CALIB_METHODS:
        raise UserInputError(f"unknown --calib-method {req.calib_method!r}; use one of {', '.join(CALIB_METHODS)}")
    if precision in CALIBRATED:
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
    if precision in CALIBRATED and not req.calib_data:
        raise UserInputError(
            f'--{precision} needs --calib-data FILE (JSONL with "text" or "input_ids" per line, or .npz)'
        )
    if req.calib_data and not Path(req.calib_data).is_file():
        raise UserInputError(f"calibration file not found: {req.calib_data}")
    if req.dla_core is not None and req.backend == "onnxruntime":
        raise UserInputError("--dla-core needs --backend tensorrt")
    if req.exclude_lean_runtime and not req.version_compatible:
        raise UserInputError("--exclude-lean-runtime only applies with --version-compatible")
    from muxdeploy.exporters.tensorrt import HARDWARE_COMPAT, EngineOptions, check_options, hardware_compat_name

    if req.hardware_compat is not None and hardware_compat_name(req.hardware_compat) not in HARDWARE_COMPAT:
        raise UserInputError(
            f"unknown --hardware-compat {req.hardware_compat!r}; use one of {', '.join(HARDWARE_COMPAT)}"
        )
    if req.builder_opt_level is not None and not 0 <= req.builder_opt_level <= 5:
        raise UserInputError(f"--builder-opt-level must be 0..5, got {req.builder_opt_level}")
    if req.workspace is not None and req.workspace < 1:
        raise UserInputError(f"--workspace must be a positive number of MiB, got {req.workspace}")
    target = None
    workspace = req.workspace
    if req.target is not None:
        from muxdeploy.exporters.tensorrt_targets import get_target

        target = get_target(req.target)
        workspace = workspace if workspace is not None else target.default_workspace_mib
    opts = EngineOptions(
        precision=precision,
        min_batch=req.min_batch,
        opt_batch=req.opt_batch,
        max_batch=req.max_batch or manifest.max_batch,
        workspace_mib=workspace,
        timing_cache=Path(req.timing_cache) if req.timing_cache else None,
        builder_opt_level=req.builder_opt_level,
        version_compatible=req.version_compatible,
        exclude_lean_runtime=req.exclude_lean_runtime,
        hardware_compat=req.hardware_compat,
        dla_core=req.dla_core,
        allow_gpu_fallback=req.allow_gpu_fallback,
    )
    check_options(None, opts)
    if target is not None:
        from muxdeploy.exporters.tensorrt_targets import check_target

        check_target(target, precision, manifest.artifact_path(REFERENCE_ONNX))
    backend, api, reason = choose_backend(req)
    if target is not None and api is not None:
        from muxdeploy.exporters.tensorrt_targets import check_builder

        check_builder(target, api)
    if api is not None:
        check_options(api, opts)  # DLA cores are counted by the TensorRT that builds
    return BuildPlan(manifest, precision, backend, reason, api, opts)


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

    plan = _validate(req)
    manifest, precision = plan.manifest, plan.precision
    bundle = Path(req.bundle)
    fp32_path = manifest.artifact_path(REFERENCE_ONNX)
    checks = _check_set(req, manifest)  # the calibration file's errors come before any output
    echo(f"backend: {plan.backend} ({plan.reason})")
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

            method = "max, amax/448" if precision == "fp8" else req.calib_method
            echo(
                f"calibrating {precision.upper()} on {checks.calib_groups.shape[0]} groups of "
                f"N={manifest.num_instances} from {req.calib_data} ({req.quantizer}, {method})"
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
                qtype=precision,
            )
        facts = evaluate(fp32_path, target, checks)
        facts["checked_on"] = checks.source
        entry = manifest.add_artifact(
            name, "onnx", precision, role=ROLE_TYPED, source=REFERENCE_ONNX, accuracy=facts, **how
        )
        manifest.data.setdefault("parity", {})[precision] = {
            k: v for k, v in facts.items() if isinstance(v, (int, float))
        }
        if precision in CALIBRATED:
            manifest.data["calibration"] = checks.summary()
        manifest.save()
        written[name] = entry
        echo(f"wrote {target}")
        echo(f"  vs FP32 ONNX: {_fmt(facts)}")
    if plan.backend == "tensorrt":
        written.update(_build_tensorrt(plan, bundle, echo, verbose=req.debug))
    elif precision == "fp8":
        echo(
            "no onnxruntime graph for fp8: onnxruntime has no fast FP8 kernels; model.fp8.onnx is for TensorRT "
            "on compute capability 8.9+ (build it there with `muxdeploy build-engine --fp8 --calib-data ...`)"
        )
    else:
        written.update(_prepare_onnxruntime(req, manifest, precision, checks, echo))
    echo(f"wrote {bundle / MANIFEST_NAME}")
    return written


def _quantize(*args: Any, debug: bool = False, qtype: str = "int8", **kwargs: Any) -> dict[str, Any]:
    """calibration.int8.quantize_int8 or calibration.fp8.quantize_fp8, showing the worker's traceback under --debug."""
    from muxdeploy.calibration.fp8 import quantize_fp8
    from muxdeploy.calibration.int8 import QuantizationError, quantize_int8

    try:
        if qtype == "fp8":
            kwargs.pop("method", None)  # FP8 calibration is fixed per quantizer (calibration/fp8.py)
            return quantize_fp8(*args, **kwargs)
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
    plan: BuildPlan, bundle: Path, echo: Callable[[str], None], verbose: bool = False
) -> dict[str, Any]:
    """engine.<precision>.plan from the typed ONNX with the plan's (validated) TensorRT module and options."""
    api, opts, manifest = plan.api, plan.opts, plan.manifest
    assert api is not None and opts is not None  # _validate set both for the tensorrt backend
    src = manifest.artifact_path(onnx_name(plan.precision))
    name = engine_name(plan.precision, api.flavor)
    shape = (
        f"fixed batch {opts.batches()[0]}"
        if opts.dla_core is not None
        else "batch {}".format("/".join(map(str, opts.batches())))
    )
    echo(f"building {name} with {api.module_name} {api.version} ({shape})")
    entry = _record_engine(manifest, src, name, opts, api, verbose=verbose)
    echo(f"wrote {bundle / name}  ({entry['plan_bytes']} bytes, built in {entry['build_seconds']} s)")
    placement = entry.get("layer_placement")
    if placement is not None:
        fell_back = placement["on_gpu"]
        echo(
            f"  DLA core {opts.dla_core}: {placement['dla_layers']} layer group(s) on the DLA, "
            f"{placement['gpu_layers']} on the GPU" + (f" ({', '.join(fell_back[:8])})" if fell_back else "")
        )
    if entry.get("precision_used") not in (None, plan.precision):
        echo(f"  computes in {entry['precision_used']} (DLA runs FP16/INT8 only)")
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
