"""`muxdeploy inspect`: a bundle's manifest as a table or JSON; one `error:` line and exit code 2 otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main


def run_cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_error_line(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "mux_model"
    shutil.copytree(tiny_bundle, out)
    return out


def _field(stdout: str, name: str) -> str:
    for line in stdout.splitlines():
        if line.strip().startswith(name):
            return line.strip()[len(name) :].strip()
    raise AssertionError(f"no {name!r} row in:\n{stdout}")


def test_inspect_shows_n_l_parity_and_artifacts(tiny_bundle: Path) -> None:
    result = run_cli("inspect", tiny_bundle)
    assert result.exit_code == 0 and result.stderr == ""
    data = json.loads((tiny_bundle / "muxdeploy.json").read_text())
    out = result.stdout
    assert _field(out, "N (instances per group)") == "4"
    assert _field(out, "L (tokens per instance)") == "16"
    assert _field(out, "mux / demux") == "gaussian_hadamard / index"
    assert _field(out, "labels") == "neg, neutral, pos"
    sha = data["artifacts"]["model.onnx"]["sha256"]
    artifact = _field(out, "artifact model.onnx")
    assert artifact.startswith("onnx fp32") and sha[:12] in artifact
    parity = _field(out, "parity export")
    assert f"max abs diff {data['parity']['export']['max_abs_diff']:.4g}" in parity
    assert "input_ids int32 ['B', 4, 16]" in out and "logits float32 ['B', 4, 3]" in out


def test_inspect_json_is_the_manifest(tiny_bundle: Path) -> None:
    result = run_cli("inspect", tiny_bundle, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((tiny_bundle / "muxdeploy.json").read_text())


def test_inspect_defaults_to_mux_model(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bundle_copy.parent)
    result = run_cli("inspect")
    assert result.exit_code == 0 and "bundle mux_model" in result.stdout


def test_inspect_keeps_unknown_keys(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / "muxdeploy.json").read_text())
    data["future_field"] = {"x": 1}
    (bundle_copy / "muxdeploy.json").write_text(json.dumps(data))
    result = run_cli("inspect", bundle_copy, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["future_field"] == {"x": 1}


def test_inspect_dir_without_manifest(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("inspect", tmp_path), "muxdeploy.json", "muxdeploy export")


def test_inspect_missing_dir(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("inspect", tmp_path / "nope"), "not found")


def test_inspect_newer_schema(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / "muxdeploy.json").read_text())
    data["schema"] = 99
    (bundle_copy / "muxdeploy.json").write_text(json.dumps(data))
    assert_one_error_line(run_cli("inspect", bundle_copy), "schema 99", "upgrade")


@pytest.mark.parametrize(
    "text, word",
    [("{broken", "not valid JSON"), ("[1, 2]", "schema"), ('{"schema": 1}', "num_instances")],
)
def test_inspect_malformed_manifest(bundle_copy: Path, text: str, word: str) -> None:
    (bundle_copy / "muxdeploy.json").write_text(text)
    assert_one_error_line(run_cli("inspect", bundle_copy), word)


def test_inspect_on_a_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    assert_one_error_line(run_cli("inspect", path), "is a file", "--help")


def test_inspect_says_what_runs_here_and_why(bundle_copy: Path) -> None:
    from muxdeploy.build import BuildRequest, run_build

    assert _field(run_cli("inspect", bundle_copy).stdout, "runs here").startswith("onnxruntime-cpu fp32 (model.onnx)")
    run_build(BuildRequest(bundle_copy, backend="onnxruntime", bench_seconds=0), echo=lambda _: None)
    line = _field(run_cli("inspect", bundle_copy).stdout, "runs here")
    assert line.startswith("onnxruntime-cpu fp32 (model.ort.onnx)")  # the fused graph before the portable one
    assert ("no TensorRT module here" in line or "no GPU answers" in line) and "onnxruntime-optimized graph" in line


def test_nested_entries_are_readable_rows(bundle_copy: Path) -> None:
    """Issue 15 item 5: artifacts' nested facts (accuracy, its throughput), parity and calibration as rows."""
    from muxdeploy.build import BuildRequest, run_build

    run_build(BuildRequest(bundle_copy, precisions=["fp16"], backend="onnxruntime", bench_seconds=0.1), echo=print)
    out = run_cli("inspect", bundle_copy).stdout
    assert "{" not in out and "}" not in out  # no raw dicts anywhere
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.strip().startswith("artifact model.fp16.ort.onnx"))
    block = lines[head : head + 30]
    accuracy = next(line for line in block if line.strip().startswith("accuracy"))
    assert accuracy.startswith("    accuracy") and "max abs diff" in accuracy and "argmax agreement" in accuracy
    throughput = next(line for line in block if line.strip().startswith("throughput cpu"))
    assert throughput.startswith("      throughput cpu") and "fp32 instances per s" in throughput
    assert _field(out, "parity fp16").startswith("max abs diff")


def test_check_engine_without_an_engine_is_one_line(bundle_copy: Path) -> None:
    assert_one_error_line(run_cli("inspect", bundle_copy, "--check-engine"), "has no TensorRT engine", "build-engine")


def test_check_engine_where_it_cannot_run_says_exactly_why(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the TensorRT-RTX engine CI builds cannot be checked (one line, exit 2); nor without TensorRT."""
    import importlib.util

    from muxdeploy.runtimes.backends import engine_facts

    if not any(importlib.util.find_spec(m) for m in engine_facts.TRT_FLAVORS["tensorrt-rtx"]):
        pytest.skip("TensorRT-RTX not installed (pip install -e '.[tensorrt-rtx]')")
    from muxdeploy.build import BuildRequest, run_build

    run_build(BuildRequest(bundle_copy, backend="tensorrt", tensorrt_module="tensorrt-rtx", max_batch=2), echo=print)
    if engine_facts.current_gpu() is None:
        assert_one_error_line(run_cli("inspect", bundle_copy, "--check-engine"), "engine.fp32.rtx.plan", "no CUDA GPU")
    monkeypatch.setitem(engine_facts.TRT_FLAVORS, "tensorrt-rtx", ("muxdeploy_no_rtx",))
    assert_one_error_line(
        run_cli("inspect", bundle_copy, "--check-engine"), "cannot check engine.fp32.rtx.plan here", "not installed"
    )
