"""FP32 ONNX -> FP8 (E4M3) Q/DQ ONNX for Hopper and Blackwell TensorRT engines, from the same packed
calibration groups as INT8.

The same quantizer machinery as INT8 (calibration/int8.py: each run in its own spawned process, the
multiplexer and demultiplexer left in float by default, only MatMul/Gemm inputs quantized), with FP8 E4M3
activations and weights:
- onnxruntime `quantize_static` (default): `QuantType.QFLOAT8E4M3FN`, symmetric, biases in float, opset 19 (the
  first opset with float8 QuantizeLinear/DequantizeLinear). Every scale is per tensor, amax / 448 (E4M3's largest
  value), as TensorRT's and ModelOpt's FP8 recipes have it: activations' amax from a max calibration over the
  packed groups, weights' from their values, handed to quantize_static as `TensorQuantOverrides`. (onnxruntime's
  own float8 scales, std / std(E4M3), clip outliers: 3.5 max abs diff and 89 % agreement on the shipped N=10
  sentiment model against 0.54 and 99.6 % with amax.) The graph also runs on onnxruntime CPU, which is how its
  accuracy against FP32 is measured without a GPU.
- NVIDIA ModelOpt's ONNX PTQ (`quantizer="modelopt"`, `quantize_mode="fp8"`) where it is installed (0.47 installs
  beside a CPU torch and calibrates on the CPU; docs/PRECISION.md has both quantizers' figures).
TensorRT builds the result as a strongly typed network: FP8 runs on compute capability 8.9 and newer
(Ada, Hopper, Blackwell); Jetson Orin (8.7) has no FP8.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.calibration.int8 import DEFAULT_EXCLUDE, DEFAULT_OP_TYPES, quantize_int8

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


def quantize_fp8(
    src: str | Path,
    dst: str | Path,
    groups: np.ndarray,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    input_name: str = "input_ids",
    batch: int = 8,
    progress: bool = False,
    quantizer: str = "onnxruntime",
) -> dict[str, Any]:
    """Quantize the FP32 ONNX at `src` into an FP8 E4M3 Q/DQ ONNX at `dst` (atomic) from [G, N, L] groups.

    `exclude`: regions kept in float ("mux", "demux"); `quantizer`: "onnxruntime" or "modelopt".
    Returns the settings used (for the manifest)."""
    method = "max"  # FP8 scales are amax / 448 with either quantizer
    how = quantize_int8(
        src,
        dst,
        groups,
        method=method,
        exclude=exclude,
        op_types=op_types,
        input_name=input_name,
        batch=batch,
        progress=progress,
        quantizer=quantizer,
        qtype="fp8",
    )
    how["fp8_format"] = "E4M3 (float8e4m3fn)"
    how["runs_on"] = "TensorRT on compute capability 8.9+ (Ada, Hopper, Blackwell); onnxruntime CPU for checks"
    return how
