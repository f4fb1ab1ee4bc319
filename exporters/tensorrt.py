"""ONNX -> TensorRT engine: one builder code path for TensorRT 10.x, 11.x and TensorRT-RTX.

Precision lives in the ONNX (FP32, mixed FP16, or INT8 Q/DQ), so every engine is built as a strongly typed
network (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`; TensorRT 11 makes every network strongly typed).
The one exception is DLA on TensorRT 10.x (JetPack 6), which needs the legacy weak-typed path with
`BuilderFlag.FP16`/`INT8`. `TrtApi` is the thin adapter over the imported module: `tensorrt` (NVIDIA
TensorRT) or `tensorrt_rtx` / `tensorrt_rtx_bindings` (TensorRT for RTX, which can build on a machine
without a GPU, used as the CI compatibility check).

DLA (`dla_core`): DLA has no dynamic dimensions, so the profile is one batch size (min = opt = max; the runtime
pads partial batches up to it); DLA runs FP16/INT8 only, so an FP32 build is refused; the layers that fell back
to the GPU are read from the builder's "Layers Running on DLA/GPU" log and recorded.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from muxdeploy.core.errors import MuxError, UserInputError
from muxdeploy.core.fsutil import write_bytes_atomic
from muxdeploy.runtimes.backends.engine_facts import TRT_FLAVORS, this_platform
from muxdeploy.runtimes.backends.tensorrt import shared_logger

__all__ = ["TRT_FLAVORS", "EngineOptions", "TrtApi", "build_engine", "load_trt"]
# precision of the typed ONNX -> what DLA's legacy weak-typed build runs (DLA has no FP32 and no FP8)
DLA_PRECISIONS = {"fp16": "fp16", "int8": "int8+fp16"}
INSTALL_HINT = {
    "tensorrt": 'install it with `pip install "muxdeploy[tensorrt]"` (x86/SBSA GPUs) or use the TensorRT that JetPack '
    "ships (Jetson); or prepare the bundle for onnxruntime instead with --backend onnxruntime",
    "tensorrt-rtx": "install it with `pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs` "
    "(the `tensorrt-rtx-cu13` sdist alone is only a stub)",
}
# manifest / CLI name -> trt.HardwareCompatibilityLevel member (the CLI also takes hyphens)
HARDWARE_COMPAT = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
# manifest "format" of engine artifacts per flavor (runtimes/backends runs "tensorrt"; RTX plans need TensorRT-RTX)
ENGINE_FORMAT = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx"}


def hardware_compat_name(text: str) -> str:
    """Canonical hardware compatibility name: "ampere-plus" and "ampere_plus" are the same level."""
    return text.strip().lower().replace("-", "_")


class TensorRTMissing(UserInputError):
    """The TensorRT module is not installed (exit 2: the user can fix it by installing it)."""


class EngineBuildError(MuxError):
    """TensorRT refused the network (parser or builder error); the message carries TensorRT's words."""


@dataclass
class TrtApi:
    """The imported TensorRT module and what it can do."""

    trt: ModuleType
    flavor: str
    module_name: str

    @property
    def version(self) -> str:
        return str(getattr(self.trt, "__version__", "unknown"))

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def has_weak_typing(self) -> bool:
        """True on TensorRT 10.x: BuilderFlag.FP16/INT8 still exist (removed in 11.x and absent in RTX)."""
        return hasattr(self.trt.BuilderFlag, "FP16")

    @property
    def strongly_typed_flag(self) -> int:
        """Network creation flags for a strongly typed network (0 where every network is strongly typed)."""
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    @property
    def has_timing_cache(self) -> bool:
        """TensorRT-RTX keeps the timing-cache API only as deprecated no-ops (since RTX 1.2)."""
        return self.flavor != "tensorrt-rtx"

    def has(self, enum: str, member: str) -> bool:
        """Whether `trt.<enum>.<member>` exists in this module."""
        return hasattr(getattr(self.trt, enum, None), member)


def load_trt(flavor: str = "tensorrt") -> TrtApi:
    """Import the TensorRT module of `flavor` ("tensorrt" or "tensorrt-rtx"), or raise TensorRTMissing."""
    if flavor not in TRT_FLAVORS:
        raise UserInputError(f"unknown TensorRT flavor {flavor!r}; use one of {', '.join(TRT_FLAVORS)}")
    errors = []
    for name in TRT_FLAVORS[flavor]:
        try:
            return TrtApi(importlib.import_module(name), flavor, name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise TensorRTMissing(f"the {flavor} Python module is not installed ({'; '.join(errors)}); {INSTALL_HINT[flavor]}")


@dataclass
class EngineOptions:
    """Builder settings (names follow trtexec where one exists)."""

    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 64
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    builder_opt_level: int | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compat: str | None = None
    dla_core: int | None = None
    allow_gpu_fallback: bool = False
    compute_capabilities: list[str] = field(default_factory=list)

    def batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the optimization profile, validated.

        With a DLA core the profile is one size, --opt-batch (default --max-batch): DLA has no dynamic
        dimensions, so min = opt = max, and the runtime pads partial batches up to it."""
        opt = self.opt_batch if self.opt_batch is not None else self.max_batch
        if self.dla_core is not None:
            if not 1 <= opt <= self.max_batch:
                raise UserInputError(
                    f"the DLA engine's fixed batch (--opt-batch) must be 1..{self.max_batch}, got {opt}"
                )
            return opt, opt, opt
        if not 1 <= self.min_batch <= opt <= self.max_batch:
            raise UserInputError(
                f"batch profile must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, "
                f"got {self.min_batch}/{opt}/{self.max_batch}"
            )
        return self.min_batch, opt, self.max_batch


def parser_errors(parser: Any) -> list[str]:
    """TensorRT ONNX parser errors as readable lines (node name, operator, description)."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        try:
            if err.node_name():
                where = f"node {err.node_name()} ({err.node_operator()}): "
        except AttributeError:  # older bindings
            pass
        out.append(f"{where}{err.desc()}")
    return out


def gpu_facts() -> dict[str, Any]:
    """Name and compute capability of GPU 0 (cuda-python, else nvidia-smi); empty without a GPU."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return {"gpu_name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}
    except Exception:  # cuda-python absent or no device: try nvidia-smi
        pass
    if shutil.which("nvidia-smi"):
        try:
            line = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            name, cap = (s.strip() for s in line.split(","))
            return {"gpu_name": name, "compute_capability": cap}
        except (subprocess.SubprocessError, OSError, IndexError, ValueError):
            pass
    return {}


def layer_placement(lines: list[str]) -> dict[str, Any]:
    """Which layers the DLA build put on the DLA and which fell back to the GPU, from the builder's log
    ("---------- Layers Running on DLA ----------" then "[DlaLayer] ..." lines, the same for GPU)."""
    dla = [line.split("]", 1)[1].strip() for line in lines if line.lstrip().startswith("[DlaLayer]")]
    gpu = [line.split("]", 1)[1].strip() for line in lines if line.lstrip().startswith("[GpuLayer]")]
    return {"dla_layers": len(dla), "gpu_layers": len(gpu), "on_gpu": gpu[:64], "on_dla": dla[:64]}


def check_options(api: TrtApi | None, opts: EngineOptions) -> None:
    """Refuse option sets no engine can honour, before any work (UserInputError naming the fix)."""
    opts.batches()
    if opts.exclude_lean_runtime:
        raise UserInputError(
            "--exclude-lean-runtime plans load only through Runtime.load_runtime(<lean library of the build "
            "version>), which muxdeploy's runtime does not do; drop it (--version-compatible plans embed the "
            "lean runtime)"
        )
    if opts.allow_gpu_fallback and opts.dla_core is None:
        raise UserInputError("--allow-gpu-fallback only applies with --dla-core (GPU engines run on the GPU anyway)")
    if opts.dla_core is not None and opts.precision not in DLA_PRECISIONS:
        raise UserInputError(
            f"DLA runs FP16 and INT8 only, not {opts.precision}; build with --fp16 or --int8 for --dla-core"
        )
    if api is not None and opts.dla_core is not None:
        cores = int(getattr(api.trt.Builder(shared_logger(api.trt)), "num_DLA_cores", 0))
        if not 0 <= opts.dla_core < cores:
            raise UserInputError(
                f"--dla-core {opts.dla_core} is not available: {api.module_name} {api.version} sees {cores} DLA "
                "core(s) on this device (DLA exists on Jetson AGX/NX Orin; build on the Jetson itself)"
            )


def _configure(
    api: TrtApi, builder: Any, network: Any, config: Any, opts: EngineOptions, legacy: bool
) -> dict[str, Any]:
    """Apply every option to the builder config; returns the flags as recorded in the manifest."""
    trt = api.trt
    flags: dict[str, Any] = {}
    lo, opt, hi = opts.batches()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(int(d) for d in tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise UserInputError(
                f"input {tensor.name} has dynamic dims {tuple(tensor.shape)} besides the batch; re-export the bundle"
            )
        profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    flags["profile"] = {"min": lo, "opt": opt, "max": hi}
    if opts.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mib) << 20)
        flags["workspace_mib"] = opts.workspace_mib
    if opts.builder_opt_level is not None:
        if not 0 <= opts.builder_opt_level <= 5:
            raise UserInputError(f"--builder-opt-level must be 0..5, got {opts.builder_opt_level}")
        config.builder_optimization_level = opts.builder_opt_level
        flags["builder_optimization_level"] = opts.builder_opt_level
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        flags["version_compatible"] = True
    if opts.hardware_compat:
        level = hardware_compat_name(opts.hardware_compat)
        member, enum = HARDWARE_COMPAT.get(level), "HardwareCompatibilityLevel"
        if member is None or not api.has(enum, member):
            raise UserInputError(
                f"--hardware-compat {opts.hardware_compat} is not offered by {api.module_name} {api.version}; "
                f"use one of {', '.join(k for k, v in HARDWARE_COMPAT.items() if api.has(enum, v))}"
            )
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
        flags["hardware_compatibility_level"] = level
    if opts.compute_capabilities:
        if not hasattr(config, "set_compute_capability"):
            raise UserInputError(
                f"{api.module_name} {api.version} cannot target compute capabilities (TensorRT-RTX only)"
            )
        config.num_compute_capabilities = len(opts.compute_capabilities)
        for i, cc in enumerate(opts.compute_capabilities):
            if not api.has("ComputeCapability", cc):
                raise UserInputError(f"compute capability {cc} is unknown to {api.module_name}; e.g. SM80, SM89, SM120")
            config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
        flags["compute_capabilities"] = list(opts.compute_capabilities)
    if api.flavor == "tensorrt-rtx" and api.has("BuilderFlag", "REQUIRE_USER_ALLOCATION"):
        # TensorRT-RTX captures CUDA graphs only for engines whose memory the application provides (RTX 1.2)
        config.set_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
        flags["require_user_allocation"] = True
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        flags["dla_core"] = opts.dla_core
        if opts.allow_gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            flags["gpu_fallback"] = True
    if legacy:
        # TensorRT 10.x DLA: weak typing, precision from builder flags (the Q/DQ graph still fixes INT8 scales)
        config.set_flag(trt.BuilderFlag.FP16)
        if opts.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        flags["legacy_weak_typed"] = True
    return flags


def _attach_timing_cache(config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):
        raise UserInputError(f"timing cache {path} does not fit this TensorRT version or GPU; delete it and rebuild")
    return cache


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    opts: EngineOptions,
    api: TrtApi | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Parse `onnx_path`, build a strongly typed engine with `opts`, and write it atomically to `plan_path`.

    Returns the engine facts for the manifest (TensorRT module and version, GPU, flags, build time).
    """
    api = api or load_trt("tensorrt")
    trt = api.trt
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path} not found; export or convert the model first")
    check_options(api, opts)
    legacy = opts.dla_core is not None and api.has_weak_typing
    logger = shared_logger(trt)
    with logger.capture(echo=verbose) as log_lines:
        builder = trt.Builder(logger)
        network = builder.create_network(0 if legacy else api.strongly_typed_flag)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = parser_errors(parser) or logger.errors or ["no detail given"]
            raise EngineBuildError(
                f"{api.module_name} {api.version} cannot parse {onnx_path.name}: {errs[0]}"
                + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
            )
        config = builder.create_builder_config()
        flags = _configure(api, builder, network, config, opts, legacy)
        cache_path = opts.timing_cache if api.has_timing_cache else None
        if opts.timing_cache is not None and cache_path is None:
            flags["timing_cache"] = f"ignored: timing caches are no-ops in {api.module_name}"
        _attach_timing_cache(config, cache_path)
        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if plan is None:
            detail = logger.errors[-1] if logger.errors else "no detail given"
            raise EngineBuildError(f"{api.module_name} {api.version} could not build {onnx_path.name}: {detail}")
    write_bytes_atomic(plan_path, bytes(memoryview(plan)))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        flags["timing_cache"] = str(cache_path)
    placement = layer_placement(log_lines) if opts.dla_core is not None else None
    return {
        "tensorrt_flavor": api.flavor,
        "tensorrt_module": api.module_name,
        "tensorrt_version": api.version,
        "platform": this_platform(),
        **gpu_facts(),
        "strongly_typed": not legacy,
        # what the engine computes in: the typed ONNX's precision, or what DLA's weak-typed build enables
        "precision_used": DLA_PRECISIONS[opts.precision] if legacy else opts.precision,
        **({"layer_placement": placement} if placement is not None else {}),
        # read by the runtime to decide whether the engine fits the machine it runs on
        "version_compatible": bool(flags.get("version_compatible", False)),
        "hardware_compatibility_level": flags.get("hardware_compatibility_level", "none"),
        **({"dla_core": flags["dla_core"], "fixed_batch": opts.batches()[0]} if "dla_core" in flags else {}),
        "build_flags": flags,
        "build_seconds": round(seconds, 2),
        "source_onnx": onnx_path.name,
        "plan_bytes": plan_path.stat().st_size,
    }
