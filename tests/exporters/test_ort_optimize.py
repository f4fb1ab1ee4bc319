"""onnxruntime's fused graph: a separate ORT-only artifact that still matches FP32."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from muxdeploy.calibration.data import synthetic_set
from muxdeploy.calibration.fp16 import write_fp16
from muxdeploy.calibration.int8 import quantize_int8
from muxdeploy.core.manifest import Manifest, ort_onnx_name
from muxdeploy.exporters.ort_optimize import contrib_ops, optimize_for_ort
from muxdeploy.exporters.parity import evaluate


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_fused_graph_matches_fp32(tiny_bundle: Path, tmp_path: Path, precision: str) -> None:
    m = Manifest.load(tiny_bundle)
    checks = synthetic_set(m, groups=8)
    fp32 = tiny_bundle / "model.onnx"
    typed = None
    if precision == "fp16":
        typed = write_fp16(fp32, tmp_path / "model.fp16.onnx")
    elif precision == "int8":
        typed = tmp_path / "model.int8.onnx"
        quantize_int8(fp32, typed, checks.held_out_groups)
    dst = tmp_path / ort_onnx_name(precision)
    facts = optimize_for_ort(fp32, typed, dst, precision, num_heads=4, hidden_size=32)
    fused = onnx.load(str(dst))
    assert contrib_ops(fused), "expected onnxruntime contrib ops (fusions) in the ORT artifact"
    assert facts["fused"].get("SkipLayerNormalization", 0) >= 2
    if typed is not None:
        assert not contrib_ops(onnx.load(str(typed)))  # the TensorRT-bound graph stays portable
    result = evaluate(fp32, dst, checks)  # the default level, "all", for every precision
    assert result["argmax_agreement"] >= 0.9
    assert result["max_abs_diff"] < {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}[precision]
