"""`build-engine --target jetpack6`: what JetPack 6's TensorRT 10.3 needs, checked before any work."""

from __future__ import annotations

import types
from pathlib import Path

import onnx
import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.exporters.ort_optimize import optimize_for_ort
from muxdeploy.exporters.tensorrt import TrtApi
from muxdeploy.exporters.tensorrt_targets import TARGETS, check_builder, check_target, get_target, onnx_problems

JETPACK6 = TARGETS["jetpack6"]


def _api(flavor: str, version: str) -> TrtApi:
    """A TrtApi over a stand-in module that only carries a version (check_builder reads nothing else)."""
    module = "tensorrt" if flavor == "tensorrt" else "tensorrt_rtx_bindings"
    return TrtApi(types.SimpleNamespace(__version__=version), flavor, module)  # type: ignore[arg-type]


def test_the_exported_graph_suits_jetpack6(tiny_bundle: Path) -> None:
    assert onnx_problems(tiny_bundle / "model.onnx", JETPACK6) == []
    for precision in ("fp32", "fp16", "int8"):
        check_target(JETPACK6, precision, tiny_bundle / "model.onnx")
    assert JETPACK6.default_workspace_mib == 1024 and get_target("jetpack6") is JETPACK6
    with pytest.raises(UserInputError, match="unknown --target 'jetpack5'; use one of jetpack6"):
        get_target("jetpack5")


def test_fp8_newer_opsets_and_contrib_ops_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"cannot run fp8; use --fp16 or --int8"):
        check_target(JETPACK6, "fp8", tiny_bundle / "model.onnx")
    newer = onnx.load(str(tiny_bundle / "model.onnx"))
    for opset in newer.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 20
    onnx.save(newer, str(tmp_path / "model.onnx"))
    with pytest.raises(UserInputError, match=r"opset 20; jetpack6 needs <= 18 \(re-export with .*--opset 18"):
        check_target(JETPACK6, "fp16", tmp_path / "model.onnx")
    fused = tmp_path / "model.ort.onnx"
    optimize_for_ort(tiny_bundle / "model.onnx", None, fused, "fp32", num_heads=4, hidden_size=32)
    (problem,) = onnx_problems(fused, JETPACK6)
    assert "holds ops TensorRT cannot parse: com.microsoft::" in problem


def test_the_builder_must_be_the_devices_tensorrt() -> None:
    check_builder(JETPACK6, _api("tensorrt", "10.3.0"))
    check_builder(JETPACK6, _api("tensorrt", "10.3.0.30"))
    with pytest.raises(UserInputError, match=r"this machine has TensorRT 10\.7\.0.*run this command on the Jetson"):
        check_builder(JETPACK6, _api("tensorrt", "10.7.0"))
    with pytest.raises(UserInputError, match="tensorrt_rtx_bindings plans do not run on Jetson"):
        check_builder(JETPACK6, _api("tensorrt-rtx", "1.7.1"))
