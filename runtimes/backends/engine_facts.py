"""Does a TensorRT engine recorded in the manifest fit this machine? (TensorRT version, GPU compute capability)

Manifest keys read from an engine's artifact entry (written by `muxdeploy build-engine`):
`tensorrt_module` ("tensorrt" or "tensorrt_rtx"), `tensorrt_version` ("10.3.0"), `gpu_name`,
`compute_capability` ("8.7" or [8, 7]), `version_compatible` (bool), `hardware_compatibility_level`
("none", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"; any case).
Missing keys are not held against an engine (nothing to compare).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from typing import Any

from muxdeploy.core.manifest import ENGINE_FORMATS, Manifest


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _cc_tuple(value: Any) -> tuple[int, int] | None:
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


# pip distributions that provide each TensorRT Python module
DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_lean", "tensorrt-lean"),
    "tensorrt_rtx": ("tensorrt_rtx", "tensorrt-rtx"),
}


def engine_module(facts: dict[str, Any]) -> str:
    """The Python module that runs this engine ("tensorrt", or "tensorrt_rtx" for TensorRT for RTX plans)."""
    return str(facts.get("tensorrt_module") or "tensorrt")


@functools.lru_cache(maxsize=4)
def installed_tensorrt_version(module: str = "tensorrt") -> str | None:
    """The installed version of a TensorRT module (pip metadata, else the module's __version__), or None."""
    if importlib.util.find_spec(module) is None:
        return None
    for dist in DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:  # JetPack installs the bindings from a .deb without pip metadata
        return str(importlib.import_module(module).__version__)
    except Exception:  # no usable TensorRT
        return None


@functools.lru_cache(maxsize=4)
def current_gpu(device_id: int = 0) -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of a CUDA device, or None when no CUDA library or GPU is usable."""
    try:
        from muxdeploy.runtimes.backends.cuda_buffers import device_properties

        return device_properties(device_id)
    except Exception:  # no CUDA here
        return None


def engine_mismatch(
    facts: dict[str, Any],
    device_id: int = 0,
    have: str | None = None,
    gpu: tuple[str, tuple[int, int]] | None = None,
) -> str | None:
    """Why an engine with these recorded facts cannot run here, or None when it may (or we cannot tell).

    `have` (TensorRT version) and `gpu` ((name, compute capability)) default to this machine's.
    """
    built = facts.get("tensorrt_version")
    have = have or installed_tensorrt_version(engine_module(facts))
    if have is None:
        return f"{engine_module(facts)} is not installed here"
    if built:
        b, h = _version_tuple(built), _version_tuple(have)
        if facts.get("version_compatible"):
            if h[0] != b[0] or h < b:
                return (
                    f"it was built with TensorRT {built} (version-compatible: needs {b[0]}.x, same or newer), "
                    f"this machine has {have}"
                )
        elif h != b:
            return f"it was built with TensorRT {built}, this machine has {have} (plans need the same version)"
    want_cc = _cc_tuple(facts.get("compute_capability"))
    gpu = gpu or current_gpu(device_id)
    if want_cc and gpu:
        name, cc = gpu
        level = str(facts.get("hardware_compatibility_level") or "none").lower()
        built_on = f"{facts.get('gpu_name', 'a GPU')} (compute capability {want_cc[0]}.{want_cc[1]})"
        if "ampere" in level:
            if cc < (8, 0):
                return f"it was built hardware-compatible for Ampere and newer, this GPU {name} is {cc[0]}.{cc[1]}"
        elif cc != want_cc:
            return f"it was built for {built_on}, this GPU is {name} (compute capability {cc[0]}.{cc[1]})"
    return None


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
