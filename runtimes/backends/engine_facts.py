"""Does a TensorRT engine recorded in the manifest fit this machine? (flavor, version, platform, GPU)

Manifest keys read from an engine's artifact entry (written by `muxdeploy build-engine`):
`tensorrt_flavor` ("tensorrt" or "tensorrt-rtx"; older records only have `tensorrt_module`, the import name),
`tensorrt_version` ("10.3.0" or "10.3.0.26"), `platform` ("linux-aarch64"), `gpu_name`,
`compute_capability` ("8.7" or [8, 7]), `version_compatible` (bool), `hardware_compatibility_level`
("none", "ampere_plus", "same_compute_capability"; any case), `build_flags` (`exclude_lean_runtime`,
`compute_capabilities` of TensorRT-RTX targets, `profile`).
Missing keys are not held against an engine (nothing to compare).

The rules, with their sources (docs/PRECISION.md, "TensorRT review"):
- a plan that is not version-compatible runs only on the TensorRT it was built with (major, minor, patch and
  build: every field both versions record);
- a version-compatible plan runs on the same major version, same or newer, and TensorRT 10 version-compatible
  plans also run on a TensorRT 11 runtime (TensorRT 11.4.1 support matrix);
- `--exclude-lean-runtime` plans load only through `Runtime.load_runtime(<lean library of the build version>)`,
  which muxdeploy does not do: they are refused with that reason;
- plans are not portable across platforms (OS and CPU architecture);
- the GPU: same compute capability, or Ampere and newer for `ampere_plus`, or one of the TensorRT-RTX build's
  target compute capabilities; TensorRT-RTX runs only on the compute capabilities it supports.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from typing import Any

from muxdeploy.core.manifest import ENGINE_FORMATS, Manifest

# flavor -> Python import names that provide it, in the order they are tried
TRT_FLAVORS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt",),
    "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}
# pip distributions that install each import name (JetPack's .deb has none: the module's __version__ is read)
DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings", "tensorrt-cu13-bindings"),
    "tensorrt_lean": ("tensorrt-lean", "tensorrt-lean-cu12", "tensorrt-lean-cu13"),
    "tensorrt_rtx": ("tensorrt-rtx", "tensorrt-rtx-cu12", "tensorrt-rtx-cu13"),
    "tensorrt_rtx_bindings": ("tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings"),
}
# a version-compatible plan built with major version K also runs on these majors (same or newer version)
VC_RUNTIME_MAJORS = {10: (10, 11)}
# compute capabilities TensorRT-RTX 1.x builds for and runs on (its ComputeCapability enum; no Hopper, no Jetson)
RTX_COMPUTE_CAPABILITIES = ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1))


def this_platform() -> str:
    """The OS and CPU architecture a plan is tied to, e.g. "linux-x86_64" or "linux-aarch64"."""
    return f"{sys.platform}-{platform.machine().lower()}"


def version_tuple(text: str) -> tuple[int, ...]:
    """(10, 3, 0, 26) from "10.3.0.26"; non-digit characters in a field are dropped."""
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cc_tuple(value: Any) -> tuple[int, int] | None:
    """(8, 7) from "8.7", [8, 7], "sm87", "SM87" or "SM120"; None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:
        return int(text[:-1]), int(text[-1])
    return None


def engine_flavor(facts: dict[str, Any]) -> str:
    """ "tensorrt" or "tensorrt-rtx": the recorded flavor, else read from the format or the import name."""
    flavor = facts.get("tensorrt_flavor")
    if flavor in TRT_FLAVORS:
        return str(flavor)
    if facts.get("format") == "tensorrt-rtx" or str(facts.get("tensorrt_module", "")).startswith("tensorrt_rtx"):
        return "tensorrt-rtx"
    return "tensorrt"


def engine_modules(facts: dict[str, Any]) -> tuple[str, ...]:
    """The import names that can run this engine, in the order to try them."""
    return TRT_FLAVORS[engine_flavor(facts)]


def engine_module(facts: dict[str, Any]) -> str:
    """The first importable module that runs this engine, else the flavor's first name (for messages)."""
    names = engine_modules(facts)
    return next((n for n in names if importlib.util.find_spec(n) is not None), names[0])


@functools.lru_cache(maxsize=8)
def installed_tensorrt_version(module: str = "tensorrt") -> str | None:
    """The installed version of a TensorRT module (its __version__, else pip metadata), or None."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # a broken install: try the metadata, which has no import side effects
        pass
    for dist in DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=4)
def current_gpu(device_id: int = 0) -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of a CUDA device, or None when no CUDA library or GPU is usable."""
    try:
        from muxdeploy.runtimes.backends.cuda_buffers import device_properties

        return device_properties(device_id)
    except Exception:  # no CUDA here
        return None


def version_mismatch(facts: dict[str, Any], have: str) -> str | None:
    """Why the installed TensorRT `have` cannot load a plan with these facts (version rules only), or None."""
    built = facts.get("tensorrt_version")
    flags = facts.get("build_flags") or {}
    if facts.get("exclude_lean_runtime") or flags.get("exclude_lean_runtime"):
        return (
            "it was built with --exclude-lean-runtime, so it loads only through Runtime.load_runtime(lean library "
            f"of TensorRT {built or '?'}), which muxdeploy does not do"
        )
    if not built:
        return None
    b, h = version_tuple(built), version_tuple(have)
    if facts.get("version_compatible"):
        majors = VC_RUNTIME_MAJORS.get(b[0], (b[0],))
        if h[0] not in majors or h < b:
            runs_on = " or ".join(f"{m}.x" for m in majors)
            return (
                f"it was built with TensorRT {built} (version-compatible: needs {runs_on}, same or newer), "
                f"this machine has {have}"
            )
        return None
    common = min(len(b), len(h), 4)
    if b[:common] != h[:common]:
        return f"it was built with TensorRT {built}, this machine has {have} (plans need the same version)"
    return None


def gpu_mismatch(facts: dict[str, Any], gpu: tuple[str, tuple[int, int]]) -> str | None:
    """Why the GPU `gpu` ((name, compute capability)) cannot run a plan with these facts, or None."""
    name, cc = gpu
    here = f"this GPU is {name} (compute capability {cc[0]}.{cc[1]})"
    if engine_flavor(facts) == "tensorrt-rtx" and cc not in RTX_COMPUTE_CAPABILITIES:
        supported = ", ".join(f"{a}.{b}" for a, b in RTX_COMPUTE_CAPABILITIES)
        return f"TensorRT-RTX plans run on compute capability {supported}; {here}"
    level = str(facts.get("hardware_compatibility_level") or "none").lower()
    if "ampere" in level:
        if cc < (8, 0):
            return f"it was built hardware-compatible for Ampere and newer, {here}"
        return None
    targets = [t for t in (facts.get("build_flags") or {}).get("compute_capabilities", []) if t != "CURRENT"]
    if targets:
        wanted = [cc_tuple(t) for t in targets]
        if cc not in wanted:
            return f"it was built for compute capability {', '.join(targets)}, {here}"
        return None
    want_cc = cc_tuple(facts.get("compute_capability"))
    if want_cc and cc != want_cc:
        built_on = f"{facts.get('gpu_name', 'a GPU')} (compute capability {want_cc[0]}.{want_cc[1]})"
        return f"it was built for {built_on}, {here}"
    return None


def engine_mismatch(
    facts: dict[str, Any],
    device_id: int = 0,
    have: str | None = None,
    gpu: tuple[str, tuple[int, int]] | None = None,
    platform_here: str | None = None,
) -> str | None:
    """Why an engine with these recorded facts cannot run here, or None when it may (or we cannot tell).

    `have` (TensorRT version), `gpu` ((name, compute capability)) and `platform_here` default to this machine's.
    """
    module = engine_module(facts)
    have = have or installed_tensorrt_version(module)
    if have is None:
        return f"{module} is not installed here"
    why = version_mismatch(facts, have)
    if why:
        return why
    built_for, here = facts.get("platform"), platform_here or this_platform()
    if built_for and built_for != here:
        return f"it was built on {built_for}, this machine is {here} (plans are not portable across platforms)"
    gpu = gpu or current_gpu(device_id)
    return gpu_mismatch(facts, gpu) if gpu else None


def explain_no_engine(manifest: Manifest, precision: str) -> str:
    """One line saying why no TensorRT engine of `precision` can run here, and what to do."""
    engines = manifest.artifacts_where(format=ENGINE_FORMATS)
    wanted = manifest.artifacts_where(format=ENGINE_FORMATS, precision=None if precision == "auto" else precision)
    prec = "" if precision == "auto" else f"{precision} "
    if not engines:
        return (
            f"bundle {manifest.bundle} has no TensorRT engine; build one with `muxdeploy build-engine` "
            "(or use --backend onnxruntime)"
        )
    if not wanted:
        have = ", ".join(f"{n} ({manifest.artifacts[n].get('precision')})" for n in engines)
        return (
            f"bundle {manifest.bundle} has no {prec}TensorRT engine (has {have}); "
            f"build one with `muxdeploy build-engine --{precision}`"
        )
    name = wanted[0]
    why = engine_mismatch(manifest.artifacts[name]) or "it does not fit this machine"
    return f"{manifest.bundle}/{name} cannot run here: {why}; rebuild it here with `muxdeploy build-engine`"


def padded_batch(batch: int, profile_min: int, profile_max: int, sizes: tuple[int, ...] = ()) -> int:
    """The batch an engine actually runs for `batch` groups: at least the profile minimum (a DLA engine's fixed
    batch), and with CUDA graphs the smallest captured size that holds it. Raises ValueError above the max."""
    if not 1 <= batch <= profile_max:
        raise ValueError(f"batch of {batch} groups is outside 1..{profile_max}, the engine's profile")
    run = max(batch, profile_min)
    fitting = [s for s in sizes if s >= run]
    return min(fitting) if fitting else run


def graph_batch_sizes(profile_min: int, profile_max: int) -> tuple[int, ...]:
    """Batch sizes that get their own execution context and CUDA graph: the profile min, powers of two between,
    and the max (a fixed-batch engine has one)."""
    sizes, size = {profile_min, profile_max}, 1
    while size < profile_max:
        if size > profile_min:
            sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))
