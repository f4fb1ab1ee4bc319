"""Vision DataMUX: checkpoint round trip, export to a real ONNX file, onnxruntime parity, packing, deployment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.cli import main
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.onnx import export_bundle
from muxdeploy.models.vision import VisionConfig, build_vision_model, preprocess_mnist
from muxdeploy.runtimes.packing import pack_groups
from muxdeploy.training.vision import predict_vision


def _model(seed: int = 0, **kw: object) -> torch.nn.Module:
    model = build_vision_model(VisionConfig(**kw))
    model.init_weights(seed)
    return model.eval()


def _ort(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "kw",
    [
        {"num_instances": 2, "transform": "nonlinear_expand"},
        {"num_instances": 3, "transform": "gaussian_conv", "combine": "mean"},
        {"num_instances": 2, "arch": "mlp", "transform": "random_ortho"},
    ],
    ids=["cnn-nonlinear", "cnn-gaussian-mean", "mlp-ortho"],
)
def test_vision_export_parity_and_manifest(tmp_path: Path, kw: dict) -> None:
    ckpt = tmp_path / "ckpt.pt"
    model = _model(**kw)
    save_checkpoint(ckpt, model, labels=[str(d) for d in range(10)])
    loaded = load_checkpoint(ckpt)
    assert loaded.kind == "vision"
    n = kw["num_instances"]
    result = export_bundle(loaded.export_spec(), n, tmp_path / "bundle", max_batch=4)
    assert result.max_abs_diff <= 1e-4
    m = Manifest.load(tmp_path / "bundle")
    assert m.model_kind == "vision"
    assert m.data["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["B", n, 1, 20, 20]}]
    assert m.data["outputs"][0]["shape"] == ["B", n, 10]
    assert m.filler.dtype == np.float32 and m.filler.shape == (1, 20, 20) and not m.filler.any()
    # 5 instances at N: the packer fills the last group with zero images; outputs match PyTorch per instance
    images = np.random.default_rng(1).random((5, 1, 20, 20), dtype=np.float32)
    groups = pack_groups(images, n, m.filler)
    got = _ort(result.onnx_path).run(None, {"images": groups})[0].reshape(-1, 10)[:5]
    np.testing.assert_allclose(got, predict_vision(model, images), atol=1e-4)
    # each slot is demultiplexed separately: swapping two images swaps their outputs
    swapped = groups.copy()
    swapped[0, [0, 1]] = groups[0, [1, 0]]
    out_a = _ort(result.onnx_path).run(None, {"images": groups})[0]
    out_b = _ort(result.onnx_path).run(None, {"images": swapped})[0]
    assert not np.allclose(out_a[0, 0], out_a[0, 1], atol=1e-3)
    assert not np.allclose(out_a[0, 0], out_b[0, 0], atol=1e-3)


def test_vision_cli_export(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, _model(num_instances=2))
    res = CliRunner().invoke(main, ["export", str(ckpt), "--n", "2", "-o", str(tmp_path / "b"), "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "muxdeploy.json").read_text())["model"]["kind"] == "vision"
    res = CliRunner().invoke(main, ["export", str(ckpt), "--n", "4", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--n 2" in res.output


def test_vision_checkpoint_keeps_fixed_transform(tmp_path: Path) -> None:
    model = _model(num_instances=2, transform="gaussian_conv", seed=3)
    save_checkpoint(tmp_path / "c.pt", model)
    loaded = load_checkpoint(tmp_path / "c.pt").model
    assert torch.equal(loaded.transform.weight, model.transform.weight) and model.transform.weight.abs().sum() > 0
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    del state["state_dict"]["transform.weight"]
    torch.save(state, tmp_path / "d.pt")
    with pytest.raises(UserInputError, match=r"transform\.weight"):
        load_checkpoint(tmp_path / "d.pt")


def test_vision_config_errors() -> None:
    with pytest.raises(UserInputError, match="does not apply"):
        VisionConfig(arch="mlp", transform="gaussian_conv")
    with pytest.raises(UserInputError, match=r"\[M, 28, 28\]"):
        preprocess_mnist(np.zeros((2, 20, 20), dtype=np.uint8))


@pytest.mark.slow
def test_vision_deploys_end_to_end_with_int8(tmp_path: Path) -> None:
    """export -> build-engine INT8 (onnxruntime; backbone Conv/Gemm quantized, mux/demux in float) -> runtime
    -> validate."""
    import onnx
    from pipeline_helpers import cli

    from muxdeploy.runtimes.runtime import MuxRuntime

    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, _model(num_instances=2), labels=[str(d) for d in range(10)])
    bundle = tmp_path / "mux_model"
    cli("export", str(ckpt), "--n", "2", "-o", str(bundle))
    rng = np.random.default_rng(0)
    images = rng.random((64, 1, 20, 20), dtype=np.float32)
    labels = rng.integers(0, 10, size=64)
    np.savez(tmp_path / "calib.npz", images=images, labels=labels)
    int8 = ["--int8", "--calib-data", str(tmp_path / "calib.npz"), "--calib-size", "8", "--backend", "onnxruntime"]
    out = cli("build-engine", str(bundle), *int8, "--bench-seconds", "0.1")
    assert "no attention to fuse" in out
    graph = onnx.load(str(bundle / "model.int8.onnx"))
    made_by = {o: n for n in graph.graph.node for o in n.output}
    quantized = {
        n.name
        for n in graph.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
        and any(made_by.get(i, n).op_type == "DequantizeLinear" for i in n.input)
    }
    assert {"node_conv2d_2", "node_conv2d_3", "node_conv2d_4", "node_linear"} <= quantized  # the backbone
    assert not quantized & {"node_Conv_57", "node_Conv_58", "node_linear_1", "node_linear_2"}  # mux and demux
    test = images[:9]
    with MuxRuntime(bundle, backend="onnxruntime-cpu", precision="fp32") as rt:
        fp32 = rt.predict_array(test)
    with MuxRuntime(bundle, backend="onnxruntime-cpu", precision="int8") as rt:
        int8 = rt.predict_array(test)
        assert [r["label_id"] for r in rt.predict(list(test))] == int8.argmax(-1).tolist()
    np.testing.assert_allclose(fp32, predict_vision(load_checkpoint(ckpt).model, test), atol=1e-4)
    assert 0 < np.abs(int8 - fp32).max() < 0.05
    data = tmp_path / "dev.jsonl"
    data.write_text(
        "".join(
            json.dumps({"image": x.tolist(), "label": int(y)}) + "\n" for x, y in zip(test, labels[:9], strict=True)
        )
    )
    for precision, tolerance in (("fp32", 1e-4), ("int8", 0.05)):
        args = ["--data", str(data), "--precision", precision, "--json", "--backend", "onnxruntime-cpu"]
        report = json.loads(cli("validate", str(bundle), *args))
        assert report["instances"] == 9 and report["task"] == "image_classification"
        assert report["max_abs_logit_diff"] < tolerance and len(report["slots"]) == 2
    # a calibration file of the wrong kind is one clear error
    np.savez(tmp_path / "ids.npz", input_ids=rng.integers(5, 100, size=(8, 6)))
    bad = CliRunner().invoke(main, ["build-engine", str(bundle), "--int8", "--calib-data", str(tmp_path / "ids.npz")])
    assert bad.exit_code == 2 and "takes float (image) inputs" in bad.output
