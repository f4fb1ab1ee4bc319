"""Build targets: what a device's TensorRT needs from the ONNX and the build (`build-engine --target NAME`).

`jetpack6`: Jetson Orin with JetPack 6.x, which ships TensorRT 10.3 and CUDA 12.6.
- the ONNX must be opset <= 18 (the opset muxdeploy exports by default; the exporter's 19..22 postdate what
  this repository has checked against TensorRT 10.3's parser) with every node in the default ONNX domain (no
  onnxruntime contrib ops such as those of the `.ort.onnx` graphs);
- no FP8: Orin (compute capability 8.7) has no FP8 tensor cores (FP8 needs 8.9+);
- the engine is built on the device itself, with JetPack's TensorRT 10.3: a plan is tied to the TensorRT version,
  the platform and the GPU it was built on, so a plan built elsewhere would not load there;
- the builder workspace is bounded (default 1024 MiB) because Orin's GPU shares the board's memory with the CPU:
  an unbounded build of a large model can exhaust an 8 GB Orin Nano. `--workspace` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from muxdeploy.core.errors import UserInputError

if TYPE_CHECKING:
    from muxdeploy.exporters.tensorrt import TrtApi


@dataclass(frozen=True)
class Target:
    """What a device's TensorRT accepts."""

    name: str
    description: str
    tensorrt_version: str  # version prefix the device's TensorRT has
    max_opset: int
    precisions: tuple[str, ...]
    default_workspace_mib: int


TARGETS = {
    "jetpack6": Target(
        name="jetpack6",
        description="Jetson Orin, JetPack 6.x (TensorRT 10.3, CUDA 12.6)",
        tensorrt_version="10.3",
        max_opset=18,
        precisions=("fp16", "int8", "fp32"),
        default_workspace_mib=1024,
    ),
}
DEFAULT_DOMAINS = ("", "ai.onnx")


def get_target(name: str) -> Target:
    """The target called `name`, or UserInputError listing the known ones."""
    if name not in TARGETS:
        raise UserInputError(f"unknown --target {name!r}; use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def onnx_problems(onnx_path: str | Path, target: Target) -> list[str]:
    """What in the ONNX file the target's TensorRT cannot parse (opset too new, ops outside the ONNX domain)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    problems = []
    opset = max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)
    if opset > target.max_opset:
        problems.append(
            f"{Path(onnx_path).name} is opset {opset}; {target.name} needs <= {target.max_opset} "
            f"(re-export with `muxdeploy export CKPT --opset {target.max_opset}`)"
        )
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        problems.append(f"{Path(onnx_path).name} holds ops TensorRT cannot parse: {', '.join(foreign[:5])}")
    return problems


def check_target(target: Target, precision: str, onnx_path: str | Path) -> None:
    """Raise UserInputError (one line) unless the precision and the ONNX suit `target` (no TensorRT needed)."""
    if precision not in target.precisions:
        raise UserInputError(
            f"--target {target.name} ({target.description}) cannot run {precision}; use "
            f"{' or '.join('--' + p for p in target.precisions if p != 'fp32')} (or no precision flag)"
        )
    problems = onnx_problems(onnx_path, target)
    if problems:
        raise UserInputError(f"--target {target.name}: {problems[0]}")


def check_builder(target: Target, api: TrtApi) -> None:
    """Raise UserInputError unless this TensorRT builds plans the target's TensorRT loads."""
    if api.flavor != "tensorrt":
        raise UserInputError(
            f"--target {target.name}: {api.module_name} plans do not run on Jetson; build on the device with "
            f"JetPack's TensorRT {target.tensorrt_version} (drop --tensorrt-module)"
        )
    if not (api.version == target.tensorrt_version or api.version.startswith(target.tensorrt_version + ".")):
        raise UserInputError(
            f"--target {target.name}: this machine has TensorRT {api.version}, the device runs only plans of "
            f"TensorRT {target.tensorrt_version}; run this command on the Jetson itself"
        )
