"""FP16 conversion: I/O contract kept, runs on onnxruntime CPU, agrees with FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from muxdeploy.calibration.data import synthetic_set
from muxdeploy.calibration.fp16 import write_fp16
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.core.onnx_io import io_types
from muxdeploy.exporters.parity import evaluate


def test_fp16_keeps_io_and_agrees(tiny_bundle: Path, tmp_path: Path) -> None:
    dst = write_fp16(tiny_bundle / "model.onnx", tmp_path / "model.fp16.onnx")
    model = onnx.load(str(dst))
    assert io_types(model) == {"input_ids": "INT32", "logits": "FLOAT"}
    inits = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    assert "FLOAT16" in inits  # the weights really are half precision
    ln_types = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ln_types and "Cast" in ln_types
    facts = evaluate(tiny_bundle / "model.onnx", dst, synthetic_set(Manifest.load(tiny_bundle), groups=8))
    assert facts["max_abs_diff"] < 1e-2 and facts["argmax_agreement"] >= 0.9
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_fp16_rejects_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        write_fp16(tmp_path / "none.onnx", tmp_path / "out.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(50, dtype=np.uint8).tobytes())
    with pytest.raises(UserInputError, match="not a readable ONNX"):
        write_fp16(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def shared_weight_graph(path: Path) -> Path:
    """Two LayerNorms and a Mul share one weight (as torch 2.11's exporter shares equal initializers)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "mm"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "w", "b"], ["y1"], axis=-1),
        helper.make_node("MatMul", ["y1", "mm"], ["y2"]),
        helper.make_node("LayerNormalization", ["y2", "w", "b"], ["y3"], axis=-1),
        helper.make_node("Mul", ["y3", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_fp16_with_initializer_shared_by_kept_and_converted_ops(tmp_path: Path) -> None:
    """onnxruntime 1.31's converter emitted one Cast per LayerNorm for such a weight: output not in SSA form."""
    import onnxruntime as ort

    src = shared_weight_graph(tmp_path / "shared.onnx")
    dst = write_fp16(src, tmp_path / "shared.fp16.onnx")
    outputs = [o for n in onnx.load(str(dst)).graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    fp32, fp16 = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, dst))
    assert np.abs(fp32.run(None, {"x": x})[0] - fp16.run(None, {"x": x})[0]).max() < 1e-2


def test_drop_duplicate_nodes_keeps_the_first_copy_only() -> None:
    from onnx import helper

    from muxdeploy.calibration.fp16 import drop_duplicate_nodes

    cast = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=1)
    other = helper.make_node("Cast", ["w"], ["w_cast_to_fp16"], to=10)
    graph = helper.make_graph([cast, other, helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=1)], "g", [], [])
    model = helper.make_model(graph)
    assert drop_duplicate_nodes(model) == 1
    assert [n.output[0] for n in model.graph.node] == ["w_cast_to_fp32", "w_cast_to_fp16"]
