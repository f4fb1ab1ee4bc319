"""Backend choice: which library runs which artifact of a bundle. Imports no backend library eagerly."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.extras import installed
from muxdeploy.core.manifest import ENGINE_FORMATS, GROUPED, PRECISIONS, ROLE_ORT, Manifest
from muxdeploy.runtimes.backends.base import Backend, MissingDependency, TensorSpec

# what `backend=` and `precision=` accept (the CLI's --backend/--precision choices)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda")
PRECISION_CHOICES = ("auto", *PRECISIONS)
NO_ONNXRUNTIME = (
    "onnxruntime is not installed here; install a backend: pip install 'muxdeploy[cpu]' (onnxruntime), "
    "'muxdeploy[gpu]' (onnxruntime-gpu, CUDA) or 'muxdeploy[tensorrt]' (runs the bundle's TensorRT engines)"
)

# Precision preference per backend when precision="auto". TensorRT: the fastest engine built (FP8 engines exist
# only where they were built, on compute capability 8.9+). onnxruntime never picks fp8 by itself (no fast kernels).
# onnxruntime CUDA: fp16 (Q/DQ int8 is poorly served by the CUDA provider). onnxruntime CPU: fp32,
# the reference (fp16 has few CPU kernels and runs slower than fp32; int8 only when asked for).
PREFERENCE = {
    "tensorrt": ("fp8", "int8", "fp16", "fp32"),
    "onnxruntime-cuda": ("fp16", "fp32", "int8"),
    "onnxruntime-cpu": ("fp32", "int8", "fp16"),
}

__all__ = [
    "BACKENDS",
    "PRECISION_CHOICES",
    "Backend",
    "MissingDependency",
    "Selection",
    "TensorSpec",
    "create",
    "explain_choice",
    "select",
]


@dataclass(frozen=True)
class Selection:
    """The chosen backend ("tensorrt", "onnxruntime-cpu", "onnxruntime-cuda"), artifact file and precision."""

    backend: str
    artifact: str
    precision: str

    def describe(self) -> str:
        """A short human-readable line, e.g. 'onnxruntime-cpu fp32 (model.onnx)'."""
        return f"{self.backend} {self.precision} ({self.artifact})"


def tensorrt_importable() -> bool:
    """True when a TensorRT Python module (tensorrt, or TensorRT-RTX under either name) can be found, unimported."""
    from muxdeploy.runtimes.backends.engine_facts import TRT_FLAVORS

    return any(importlib.util.find_spec(m) is not None for names in TRT_FLAVORS.values() for m in names)


def _runnable(manifest: Manifest, backend: str, precision: str) -> list[str]:
    """Grouped [B, N, ...] artifacts of this precision the backend runs (instance-batched ones are for servers):
    engines for tensorrt; ONNX for onnxruntime, an onnxruntime-optimized one first."""
    if backend == "tensorrt":
        return manifest.artifacts_where(format=ENGINE_FORMATS, precision=precision, signature=GROUPED)
    names = manifest.artifacts_where(format="onnx", precision=precision, signature=GROUPED)
    return sorted(names, key=lambda n: manifest.artifacts[n].get("role") != ROLE_ORT)


def _pick(manifest: Manifest, backend: str, precision: str, fitting_only: bool = False) -> Selection | None:
    """First artifact in preference order; with `fitting_only`, only engines whose recorded facts fit this machine."""
    order = PREFERENCE[backend] if precision == "auto" else (precision,)
    for p in order:
        names = _runnable(manifest, backend, p)
        if fitting_only:
            from muxdeploy.runtimes.backends.engine_facts import engine_mismatch

            names = [n for n in names if engine_mismatch(manifest.artifacts[n]) is None]
        if names:
            return Selection(backend, names[0], p)
    return None


def _explicit_engine(manifest: Manifest, precision: str) -> Selection:
    """backend="tensorrt": the engine file's sha256 is checked first, then its recorded TensorRT/GPU facts."""
    from muxdeploy.runtimes.backends.engine_facts import (
        engine_mismatch,
        engine_module,
        explain_no_engine,
        installed_tensorrt_version,
    )

    chosen = _pick(manifest, "tensorrt", precision, fitting_only=True) or _pick(manifest, "tensorrt", precision)
    if chosen is None:
        raise UserInputError(explain_no_engine(manifest, precision))
    manifest.verify_artifact(chosen.artifact)
    module = engine_module(manifest.artifacts[chosen.artifact])
    if installed_tensorrt_version(module) is None:
        from muxdeploy.runtimes.backends.tensorrt import INSTALL_HINT

        raise MissingDependency(
            f"{chosen.artifact} needs the {module} Python module (TensorRT), which is not installed; {INSTALL_HINT}"
        )
    why = engine_mismatch(manifest.artifacts[chosen.artifact])
    if why:
        raise UserInputError(
            f"{manifest.bundle}/{chosen.artifact} cannot run here: {why}; "
            "rebuild it on this machine with `muxdeploy build-engine` (or use --backend onnxruntime)"
        )
    return chosen


def select(manifest: Manifest, backend: str = "auto", precision: str = "auto") -> Selection:
    """Pick backend and artifact. auto: TensorRT when the module imports, a GPU answers and an engine
    fits it (TensorRT version, compute capability), else onnxruntime (CUDA provider when present, else
    CPU). Raises UserInputError naming the fix."""
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISION_CHOICES:
        raise UserInputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
    have = ", ".join(f"{n} ({f.get('format')} {f.get('precision')})" for n, f in manifest.artifacts.items()) or "none"
    if backend == "auto":
        from muxdeploy.runtimes.backends.engine_facts import current_gpu

        if tensorrt_importable() and current_gpu() is not None:
            chosen = _pick(manifest, "tensorrt", precision, fitting_only=True)
            if chosen:
                manifest.verify_artifact(chosen.artifact)
                return chosen
        from muxdeploy.runtimes.backends.onnxruntime import cuda_available

        backend = "onnxruntime-cuda" if cuda_available() else "onnxruntime-cpu"
    elif backend == "onnxruntime":
        from muxdeploy.runtimes.backends.onnxruntime import cuda_available

        backend = "onnxruntime-cuda" if cuda_available() else "onnxruntime-cpu"
    if backend == "tensorrt":
        return _explicit_engine(manifest, precision)
    if not installed("onnxruntime"):
        raise MissingDependency(NO_ONNXRUNTIME)
    chosen = _pick(manifest, backend, precision)
    if chosen is None:
        want = "ONNX artifact" if precision == "auto" else f"{precision} ONNX artifact"
        raise UserInputError(
            f"bundle {manifest.bundle} has no {want} for {backend} (artifacts: {have}); "
            "build it with `muxdeploy build-engine` or pick another --precision"
        )
    return chosen


def explain_choice(manifest: Manifest) -> tuple[Selection | None, str]:
    """What MuxRuntime(bundle) with no backend named would run on this machine, and why (one line)."""
    from muxdeploy.runtimes.backends.engine_facts import current_gpu
    from muxdeploy.runtimes.backends.onnxruntime import cuda_available

    why = []
    if not tensorrt_importable():
        why.append("no TensorRT module here")
    elif current_gpu() is None:
        why.append("TensorRT is installed but no GPU answers")
    elif _pick(manifest, "tensorrt", "auto", fitting_only=True) is None:
        why.append("no engine in the bundle fits this GPU and TensorRT")
    try:
        chosen = select(manifest, "auto", "auto")
    except (UserInputError, MissingDependency) as exc:
        return None, "; ".join([*why, str(exc)])
    if chosen.backend == "tensorrt":
        return chosen, "TensorRT engine built for this GPU and TensorRT version (fastest)"
    order = PREFERENCE[chosen.backend]
    device = "onnxruntime has the CUDA provider" if cuda_available() else "onnxruntime runs on the CPU"
    why.append(f"{device}: precision order {', '.join(order)}")
    if manifest.artifacts.get(chosen.artifact, {}).get("role") == "ort-optimized":
        why.append("the onnxruntime-optimized graph (fused kernels) before the portable one")
    return chosen, "; ".join(why)


def create(selection: Selection, manifest: Manifest, max_batch: int, **options: Any) -> Backend:
    """A new, inactive backend for `selection` (the artifact's sha256 is checked here)."""
    path = manifest.verify_artifact(selection.artifact)
    inp = TensorSpec.from_manifest(manifest.data["inputs"][0])
    out = TensorSpec.from_manifest(manifest.data["outputs"][0])
    if selection.backend == "tensorrt":
        from muxdeploy.runtimes.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(
            path,
            inp,
            out,
            max_batch,
            facts=manifest.artifacts[selection.artifact],
            cuda_graphs=bool(options.get("cuda_graphs")),  # None (auto): off for TensorRT
            device_id=int(options.get("device_id", 0)),
        )
    from muxdeploy.runtimes.backends.onnxruntime import OnnxRuntimeBackend

    device = "cuda" if selection.backend == "onnxruntime-cuda" else "cpu"
    facts = manifest.artifacts.get(selection.artifact, {})
    return OnnxRuntimeBackend(
        path,
        inp,
        out,
        max_batch,
        device=device,
        intra_op_threads=options.get("intra_op_threads"),
        device_id=int(options.get("device_id", 0)),
        graph_optimization=str(facts.get("session_graph_optimization_level") or "all"),
        cuda_graphs=options.get("cuda_graphs") is not False,  # None (auto): on for onnxruntime CUDA
        provider_options=options.get("provider_options"),
    )
