"""`muxdeploy build-engine` end to end on the tiny bundle: typed ONNX, manifest figures, errors, no half files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from precision_helpers import copy_bundle, listing, write_ids_jsonl

from muxdeploy.cli import main
from muxdeploy.core.manifest import Manifest, sha256_file
from muxdeploy.exporters import tensorrt as trt_builder


def _run(*args: str):
    return CliRunner().invoke(main, ["build-engine", *args])


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return copy_bundle(tiny_bundle, tmp_path / "mux_model")


@pytest.fixture
def calib_file(tmp_path: Path) -> Path:
    return write_ids_jsonl(tmp_path / "dev.jsonl", 64)


HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


@pytest.mark.parametrize(
    "quantizer",
    [
        "onnxruntime",
        pytest.param("modelopt", marks=pytest.mark.skipif(not HAS_MODELOPT, reason="NVIDIA ModelOpt not installed")),
    ],
)
def test_int8_for_onnxruntime(bundle: Path, calib_file: Path, quantizer: str) -> None:
    before = json.loads((bundle / "muxdeploy.json").read_text())
    res = _run(
        str(bundle),
        "--int8",
        "--quantizer",
        quantizer,
        "--calib-data",
        str(calib_file),
        "--calib-size",
        "16",
        "--backend",
        "onnxruntime",
        "--bench-seconds",
        "0.2",
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {bundle / 'model.int8.onnx'}" in res.output and "CPU instances/s" in res.output
    m = Manifest.load(bundle)
    typed, fused = m.artifacts["model.int8.onnx"], m.artifacts["model.int8.ort.onnx"]
    assert typed["sha256"] == sha256_file(bundle / "model.int8.onnx") and typed["role"] == "typed"
    assert typed["format"] == fused["format"] == "onnx" and typed["precision"] == fused["precision"] == "int8"
    assert typed["quantizer"].startswith(quantizer)
    assert m.artifacts["model.onnx"]["sha256"] == sha256_file(bundle / "model.onnx")  # the source is untouched
    acc = typed["accuracy"]
    assert acc["held_out_instances"] == 32 and 0 < acc["max_abs_diff"] < 1 and 0 <= acc["accuracy"] <= 1
    assert "accuracy_fp32" in acc and m.data["parity"]["int8"]["argmax_agreement"] == acc["argmax_agreement"]
    assert m.data["calibration"]["calibration_groups"] == 16 and typed["calibration_groups"] == 16
    assert fused["role"] == "ort-optimized" and fused["contrib_ops"] and fused["accuracy"]["throughput_cpu"]
    assert not [n for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node if n.domain == "com.microsoft"]
    # existing keys are kept
    assert m.data["parity"]["export"] == before["parity"]["export"] and "model.onnx" in m.artifacts
    assert not [p for p in listing(bundle) if p.startswith(".")]


def _bundle_bytes(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def test_fp16_without_tensorrt_builds_for_onnxruntime_and_says_why(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(trt_builder.TRT_FLAVORS, "tensorrt", ("muxdeploy_no_such_trt",))
    res = _run(str(bundle), "--fp16", "--bench-seconds", "0")
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith("backend: onnxruntime (no tensorrt module here, so no TensorRT engine")
    assert "pip install 'muxdeploy[tensorrt]'" in first
    m = Manifest.load(bundle)
    assert m.artifacts["model.fp16.onnx"]["accuracy"]["max_abs_diff"] < 1e-2
    assert m.artifacts["model.fp16.ort.onnx"]["role"] == "ort-optimized"
    assert not (bundle / "engine.fp16.plan").exists()


@pytest.mark.parametrize("extra", [["--backend", "tensorrt"], ["--target", "jetpack6"], ["--dla-core", "0"]])
def test_explicit_tensorrt_without_tensorrt_fails_before_any_work(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    monkeypatch.setitem(trt_builder.TRT_FLAVORS, "tensorrt", ("muxdeploy_no_such_trt",))
    before = _bundle_bytes(bundle)
    res = _run(str(bundle), "--fp16", *extra)
    assert res.exit_code == 2, res.output
    (line,) = [line for line in res.output.splitlines() if line.strip()]
    assert line.startswith("error: the tensorrt Python module is not installed") and "muxdeploy[tensorrt]" in line
    assert _bundle_bytes(bundle) == before  # byte-identical: no typed ONNX, no manifest change


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--precision", "fp4"], "unknown precision 'fp4'"),
        (["--fp8"], "--fp8 needs --calib-data"),
        (["--fp16", "--allow-gpu-fallback"], "only applies with --dla-core"),
        (["--dla-core", "0"], "DLA runs FP16 and INT8 only, not fp32"),
        (["--fp16", "--dla-core", "0", "--opt-batch", "9"], "fixed batch (--opt-batch) must be 1..8"),
        (["--fp16", "--version-compatible", "--exclude-lean-runtime"], "Runtime.load_runtime"),
        (["--fp16", "--target", "jetpack5"], "unknown --target 'jetpack5'"),
        (["--fp8", "--calib-data", "GOOD", "--target", "jetpack6"], "cannot run fp8"),
        (["--fp16", "--int8"], "pick one precision"),
        (["--int8"], "--int8 needs --calib-data"),
        (["--int8", "--calib-data", "EMPTY"], "is empty"),
        (["--int8", "--calib-data", "MALFORMED"], "line 2: not valid JSON"),
        (["--int8", "--calib-data", "FEW"], "fewer than N=4"),
        (["--int8", "--calib-data", "MISSING"], "calibration file not found"),
        (["--int8", "--calib-data", "GOOD", "--calib-method", "mse"], "unknown --calib-method"),
        (
            ["--int8", "--calib-data", "GOOD", "--quantizer", "modelopt", "--calib-method", "percentile"],
            "max or entropy",
        ),
        (["--fp16", "--backend", "tflite"], "unknown --backend 'tflite'; use auto, tensorrt, onnxruntime"),
        (["--fp16", "--min-batch", "9"], "--min-batch"),
        (["--fp16", "--hardware-compat", "turing"], "unknown --hardware-compat"),
        (["--fp16", "--exclude-lean-runtime"], "only applies with --version-compatible"),
        (["--fp16", "--tensorrt-module", "openvino"], "unknown --tensorrt-module"),
        (["--fp16", "--builder-opt-level", "7"], "--builder-opt-level must be 0..5"),
        (["--fp16", "--dla-core", "0", "--backend", "onnxruntime"], "--dla-core needs --backend tensorrt"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    bundle: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    files = {
        "EMPTY": tmp_path / "empty.jsonl",
        "MALFORMED": tmp_path / "bad.jsonl",
        "FEW": tmp_path / "few.jsonl",
        "MISSING": tmp_path / "missing.jsonl",
        "GOOD": write_ids_jsonl(tmp_path / "good.jsonl", 16),
    }
    files["EMPTY"].write_text("")
    files["MALFORMED"].write_text('{"input_ids": [5, 6]}\n{"input_ids": [5,\n')
    write_ids_jsonl(files["FEW"], 3)
    args = [str(files.get(a, a)) for a in args]
    manifest_before = (bundle / "muxdeploy.json").read_bytes()
    before = listing(bundle)
    res = _run(str(bundle), *args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert listing(bundle) == before and (bundle / "muxdeploy.json").read_bytes() == manifest_before


def test_bundle_without_model_onnx(bundle: Path, tmp_path: Path) -> None:
    (bundle / "model.onnx").unlink()
    res = _run(str(bundle), "--fp16")
    assert res.exit_code == 2 and "has no model.onnx" in res.output and "muxdeploy export" in res.output
    res = _run(str(tmp_path / "nowhere"), "--fp16")
    assert res.exit_code == 2 and "bundle directory not found" in res.output


def test_changed_model_onnx_is_refused(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"x")
    before = listing(bundle)
    res = _run(str(bundle), "--fp16")
    assert res.exit_code == 2 and "does not match the sha256" in res.output and listing(bundle) == before


def test_help_teaches() -> None:
    res = CliRunner().invoke(main, ["build-engine", "--help"])
    assert res.exit_code == 0
    for flag in (
        "--calib-data",
        "--calib-size",
        "--calib-method",
        "--workspace",
        "--timing-cache",
        "--dla-core",
        "--allow-gpu-fallback",
        "--version-compatible",
        "--hardware-compat",
        "--builder-opt-level",
        "--min-batch",
        "--opt-batch",
        "--max-batch",
        "--backend",
    ):
        assert flag in res.output


@pytest.mark.skipif(
    not any(importlib.util.find_spec(n) for n in trt_builder.TRT_FLAVORS["tensorrt-rtx"]),
    reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)",
)
def test_int8_engine_with_tensorrt_rtx(bundle: Path, calib_file: Path) -> None:
    res = _run(
        str(bundle),
        "--int8",
        "--calib-data",
        str(calib_file),
        "--calib-size",
        "8",
        "--tensorrt-module",
        "tensorrt-rtx",
        "--max-batch",
        "4",
        "--workspace",
        "256",
        "--hardware-compat",
        "ampere-plus",
    )
    assert res.exit_code == 0, res.output
    entry = Manifest.load(bundle).artifacts["engine.int8.rtx.plan"]
    assert entry["hardware_compatibility_level"] == "ampere_plus"
    assert entry["format"] == "tensorrt-rtx" and entry["precision"] == "int8" and entry["strongly_typed"]
    assert entry["tensorrt_module"].startswith("tensorrt_rtx") and entry["build_flags"]["workspace_mib"] == 256
    assert (
        entry["sha256"] == sha256_file(bundle / "engine.int8.rtx.plan") and not (bundle / "engine.int8.plan").exists()
    )


def test_fp8_without_tensorrt_writes_and_measures_the_fp8_graph(
    bundle: Path, calib_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(trt_builder.TRT_FLAVORS, "tensorrt", ("muxdeploy_no_such_trt",))
    res = _run(str(bundle), "--fp8", "--calib-data", str(calib_file), "--calib-size", "8")
    assert res.exit_code == 0, res.output
    assert "no onnxruntime graph for fp8" in res.output
    typed = Manifest.load(bundle).artifacts["model.fp8.onnx"]
    assert typed["role"] == "typed" and typed["activations"].startswith("fp8 e4m3 symmetric per-tensor, scale amax/448")
    assert typed["accuracy"]["max_abs_diff"] < 0.5 and typed["calib_method"] == "max"
    graph = onnx.load(str(bundle / "model.fp8.onnx"))
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    assert any(i.data_type == fp8 for i in graph.graph.initializer)  # FP8 weights / zero points in the graph
    assert not [p for p in listing(bundle) if "plan" in p or p.endswith(".ort.onnx")]


@pytest.mark.skipif(
    not any(importlib.util.find_spec(n) for n in trt_builder.TRT_FLAVORS["tensorrt-rtx"]),
    reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)",
)
def test_fp8_engine_with_tensorrt_rtx(bundle: Path, calib_file: Path) -> None:
    """Issue 16 item 4: TensorRT-RTX parses and builds the FP8 Q/DQ graph as a strongly typed engine."""
    res = _run(
        str(bundle), "--fp8", "--calib-data", str(calib_file), "--calib-size", "8", "--tensorrt-module", "tensorrt-rtx"
    )
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("backend: tensorrt (tensorrt_rtx")
    entry = Manifest.load(bundle).artifacts["engine.fp8.rtx.plan"]
    assert entry["precision"] == entry["precision_used"] == "fp8" and entry["strongly_typed"]
    assert entry["source_onnx"] == "model.fp8.onnx" and entry["sha256"] == sha256_file(bundle / "engine.fp8.rtx.plan")


@pytest.mark.skipif(
    not any(importlib.util.find_spec(n) for n in trt_builder.TRT_FLAVORS["tensorrt-rtx"]),
    reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)",
)
def test_dla_core_the_builder_does_not_have_is_refused_before_any_work(bundle: Path) -> None:
    """TensorRT-RTX reports 0 DLA cores, as any non-Jetson TensorRT does: one line, the bundle byte-identical."""
    before = _bundle_bytes(bundle)
    res = _run(str(bundle), "--fp16", "--dla-core", "0", "--tensorrt-module", "tensorrt-rtx")
    assert res.exit_code == 2, res.output
    (line,) = [line for line in res.output.splitlines() if line.strip()]
    assert "--dla-core 0 is not available" in line and "sees 0 DLA core(s)" in line
    assert _bundle_bytes(bundle) == before


@pytest.mark.skipif(not HAS_MODELOPT, reason="NVIDIA ModelOpt not installed")
def test_fp8_with_modelopt(bundle: Path, calib_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelOpt's ONNX PTQ in FP8 mode, calibrated on the CPU, where it is installed (not in CI)."""
    monkeypatch.setitem(trt_builder.TRT_FLAVORS, "tensorrt", ("muxdeploy_no_such_trt",))
    res = _run(str(bundle), "--fp8", "--quantizer", "modelopt", "--calib-data", str(calib_file), "--calib-size", "8")
    assert res.exit_code == 0, res.output
    typed = Manifest.load(bundle).artifacts["model.fp8.onnx"]
    assert typed["quantizer"].startswith("modelopt") and typed["quantize_mode"] == "fp8"
    assert typed["accuracy"]["argmax_agreement"] > 0.9
