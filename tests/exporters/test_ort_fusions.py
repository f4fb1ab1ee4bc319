"""Our rewrites toward onnxruntime's fused kernels keep the function and hit the kernels they aim at."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.ort_fusions import (
    EMBED_FORMS,
    fuse_broadcast_skip_layer_norm,
    fuse_embed_layer_norm,
    move_attention_scale,
    sum_slot_outputs,
    transpose_matmul_weights,
)
from muxdeploy.exporters.ort_optimize import optimize_for_ort
from muxdeploy.exporters.parity import parity_inputs
from muxdeploy.runtimes.backends.onnxruntime import cuda_available


def _run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": feed})[0]


@pytest.mark.parametrize("form", EMBED_FORMS)
def test_rewrites_keep_the_function(tiny_bundle: Path, form: str) -> None:
    m = Manifest.load(tiny_bundle)
    original = onnx.load(str(tiny_bundle / "model.onnx"))
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    n, layers = m.num_instances, m.data["model"]["config"]["num_hidden_layers"]
    assert fuse_embed_layer_norm(model, form) == n  # one per mux slot
    assert sum_slot_outputs(model) == 1
    assert fuse_broadcast_skip_layer_norm(model) == 1  # the second embedding pass
    assert move_attention_scale(model) == layers
    matmuls = sum(node.op_type == "MatMul" for node in model.graph.node)
    assert transpose_matmul_weights(model) >= 4 * layers and matmuls > 4 * layers
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops[form] == n + (1 if form == "SkipLayerNormalization" else 0) and ops["Sum"] == 1
    assert ops["Div"] >= layers and ops["FusedMatMul"] >= 4 * layers
    onnx.checker.check_model(model)  # topologically sorted, contrib domain imported
    feed = parity_inputs(m.vocab_size, m.pad_token_id, n, m.seq_len, 5, seed=2)
    np.testing.assert_allclose(_run(model, feed), _run(original, feed), atol=1e-5, rtol=1e-4)
    assert fuse_embed_layer_norm(model) == sum_slot_outputs(model) == move_attention_scale(model) == 0
    assert fuse_broadcast_skip_layer_norm(model) == transpose_matmul_weights(model) == 0


def test_ort_artifact_fuses_attention_and_embeddings(tiny_bundle: Path, tmp_path: Path) -> None:
    m = Manifest.load(tiny_bundle)
    facts = optimize_for_ort(tiny_bundle / "model.onnx", None, tmp_path / "model.ort.onnx", "fp32", 4, 32)
    layers = m.data["model"]["config"]["num_hidden_layers"]
    assert facts["fused"]["Attention"] == layers
    assert facts["fused"]["EmbedLayerNormalization"] == m.num_instances
    assert facts["fused"]["SkipLayerNormalization"] == 2 * layers + 1  # + the second embedding pass


def test_tanh_gelu_swaps_bias_gelu_for_fast_gelu(tiny_bundle: Path, tmp_path: Path) -> None:
    """gelu="tanh": every BiasGelu becomes FastGelu (the tanh form cuBLASLt's GELU epilogue computes); the outputs
    move by the approximation's size only."""
    m = Manifest.load(tiny_bundle)
    layers = m.data["model"]["config"]["num_hidden_layers"]
    exact, tanh = tmp_path / "exact.onnx", tmp_path / "tanh.onnx"
    optimize_for_ort(tiny_bundle / "model.onnx", None, exact, "fp32", 4, 32)
    facts = optimize_for_ort(tiny_bundle / "model.onnx", None, tanh, "fp32", 4, 32, gelu="tanh")
    before = Counter(node.op_type for node in onnx.load(str(exact)).graph.node)
    ops = Counter(node.op_type for node in onnx.load(str(tanh)).graph.node)
    assert before["BiasGelu"] >= layers and before["FastGelu"] == 0  # the encoder's FFNs (+ the demux head's)
    assert ops["FastGelu"] == before["BiasGelu"] + before["Gelu"] and ops["BiasGelu"] == ops["Gelu"] == 0
    assert "FastGelu" in facts["contrib_ops"]
    feed = parity_inputs(m.vocab_size, m.pad_token_id, m.num_instances, m.seq_len, 5, seed=3)
    diff = np.abs(_run(onnx.load(str(tanh)), feed) - _run(onnx.load(str(exact)), feed)).max()
    assert 0 < diff < 1e-2
    with pytest.raises(ValueError, match="exact or tanh"):
        optimize_for_ort(tiny_bundle / "model.onnx", None, tanh, "fp32", 4, 32, gelu="fast")


@pytest.mark.parametrize(
    "provider",
    [
        "CPUExecutionProvider",
        pytest.param(
            "CUDAExecutionProvider",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not cuda_available(), reason="onnxruntime-gpu (CUDA provider) not installed"),
            ],
        ),
    ],
)
def test_every_artifact_loads_with_default_session_options(tiny_bundle: Path, tmp_path: Path, provider: str) -> None:
    """A user's app or a server loads our files with InferenceSession(path) and nothing else (ORT_ENABLE_ALL; on
    CUDA the provider named, as onnxruntime-gpu requires): onnxruntime 1.32's NchwcTransformer crashed (SIGSEGV)
    on our earlier FP16 graph. A subprocess per file, so a crash fails the test instead of killing it."""
    from muxdeploy.calibration.data import synthetic_set
    from muxdeploy.calibration.fp16 import write_fp16
    from muxdeploy.calibration.int8 import quantize_int8

    m = Manifest.load(tiny_bundle)
    fp32 = tiny_bundle / "model.onnx"
    files = {"fp32": fp32, "fp16": write_fp16(fp32, tmp_path / "model.fp16.onnx")}
    files["int8"] = tmp_path / "model.int8.onnx"
    quantize_int8(fp32, files["int8"], synthetic_set(m, groups=8).held_out_groups)
    for precision in ("fp32", "fp16", "int8"):
        dst = tmp_path / f"model.{precision}.ort.onnx"
        optimize_for_ort(fp32, None if precision == "fp32" else files[precision], dst, precision, 4, 32)
        files[f"{precision}-ort"] = dst
    feed = tmp_path / "feed.npy"
    np.save(feed, parity_inputs(m.vocab_size, m.pad_token_id, m.num_instances, m.seq_len, 2))
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=[sys.argv[3]])\n"
        "assert s.get_providers()[0] == sys.argv[3], s.get_providers()\n"
        "out = s.run(None, {'input_ids': np.load(sys.argv[2])})[0]\n"
        "assert np.isfinite(out).all(); print('ok', out.shape)\n"
    )
    for name, path in files.items():
        argv = [sys.executable, "-c", code, str(path), str(feed), provider]
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0 and "ok" in run.stdout, f"{name}: rc {run.returncode} {run.stderr[-400:]}"


def test_second_pass_constant_is_folded_when_the_exporter_left_a_subgraph() -> None:
    """Large position tables are not constant-folded by the exporter: LayerNorm(x + (Slice(P) + t)) still fuses."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table, type0 = rng.standard_normal((9, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    inits = [
        numpy_helper.from_array(table, "P"),
        numpy_helper.from_array(type0, "t"),
        numpy_helper.from_array(np.array([2], np.int64), "s"),
        numpy_helper.from_array(np.array([7], np.int64), "e"),
        numpy_helper.from_array(np.array([0], np.int64), "a"),
        numpy_helper.from_array(np.ones(4, np.float32), "g"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Slice", ["P", "s", "e", "a"], ["rows"]),
        helper.make_node("Add", ["rows", "t"], ["second"]),
        helper.make_node("Add", ["x", "second"], ["summed"]),
        helper.make_node("LayerNormalization", ["summed", "g", "b"], ["y"], epsilon=1e-5),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)]
    )
    feed = rng.standard_normal((2, 5, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": feed})[0]
    assert fuse_broadcast_skip_layer_norm(model) == 1
    assert [n.op_type for n in model.graph.node][-1] == "SkipLayerNormalization"
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": feed})[0]
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_building_the_fused_graph_leaves_nothing_in_the_working_directory(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's symbolic shape inference writes sym_shape_infer_temp.onnx (+ external data) into the working
    directory when it cannot infer every shape (it cannot for FusedMatMul): it must not land in the user's."""
    from muxdeploy.calibration.fp16 import write_fp16

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fp16 = write_fp16(tiny_bundle / "model.onnx", tmp_path / "model.fp16.onnx")
    dst = tmp_path / "model.fp16.ort.onnx"
    optimize_for_ort(tiny_bundle / "model.onnx", fp16, dst, "fp16", 4, 32, transposed_weights=True)
    assert list(work.iterdir()) == []
