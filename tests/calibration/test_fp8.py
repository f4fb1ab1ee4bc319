"""FP8 E4M3 Q/DQ from packed calibration groups: amax/448 scales, float mux/demux, runs on onnxruntime CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from muxdeploy.calibration.data import synthetic_set
from muxdeploy.calibration.fp8 import quantize_fp8
from muxdeploy.calibration.int8 import mux_demux_nodes
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.parity import evaluate


def test_fp8_graph_has_amax_scales_and_keeps_mux_demux_in_float(tiny_bundle: Path, tmp_path: Path) -> None:
    fp32 = tiny_bundle / "model.onnx"
    checks = synthetic_set(Manifest.load(tiny_bundle), groups=16)
    how = quantize_fp8(fp32, tmp_path / "model.fp8.onnx", checks.held_out_groups)
    assert how["weights"] == "fp8 e4m3 symmetric per-tensor, scale amax/448" and how["calib_method"] == "max"
    source, graph = onnx.load(str(fp32)), onnx.load(str(tmp_path / "model.fp8.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 19
    weights = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    inits = {i.name: i for i in graph.graph.initializer}
    checked = 0
    for node in graph.graph.node:  # each FP8 weight's scale is max |W| / 448 of the FP32 weight it replaces
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = inits[node.input[0]]
            assert q.data_type == onnx.TensorProto.FLOAT8E4M3FN
            original = weights[node.input[0].removesuffix("_quantized")]
            scale = float(numpy_helper.to_array(inits[node.input[1]]))
            assert np.isclose(scale, np.abs(original).max() / 448.0, rtol=1e-6)
            checked += 1
    assert checked >= 8  # the encoder's q/k/v/out/ffn MatMuls of two layers
    mux, demux = mux_demux_nodes(source)
    float_nodes = set(mux + demux)
    dq_outputs = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_consumers = {n.name for n in graph.graph.node if dq_outputs & set(n.input)}
    assert not (quantized_consumers & float_nodes)
    facts = evaluate(fp32, tmp_path / "model.fp8.onnx", checks)  # runs on onnxruntime CPU
    assert facts["argmax_agreement"] >= 0.9 and facts["max_abs_diff"] < 0.05
