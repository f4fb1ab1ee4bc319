"""The Python API (muxdeploy.export / build_engine / validate / bench): the whole path without the CLI, typed
results, the CLI's one-line errors as exceptions, and the CLI commands going through exactly these functions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from precision_helpers import copy_bundle, write_ids_jsonl

import muxdeploy
from muxdeploy import api
from muxdeploy.build import BuildResult
from muxdeploy.cli import main
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.evaluation.benchmark import BenchReport
from muxdeploy.evaluation.validation import ValidationReport
from muxdeploy.exporters.onnx import ExportResult


def test_export_build_int8_validate_through_the_api(tiny_ckpt: Path, tmp_path: Path) -> None:
    data = write_ids_jsonl(tmp_path / "dev.jsonl", 48)
    lines: list[str] = []

    exported = muxdeploy.export(tiny_ckpt, n=4, out=tmp_path / "mux_model", max_batch=8, echo=lines.append)
    assert isinstance(exported, ExportResult) and isinstance(exported.manifest, Manifest)
    assert exported.bundle == tmp_path / "mux_model" and exported.onnx_path.is_file()
    assert exported.manifest.num_instances == 4 and 0 <= exported.max_abs_diff <= 1e-4
    assert lines == [f"loading {tiny_ckpt}", "exporting N=4 L=16 (opset 18, batch 1..8)"]

    built = muxdeploy.build_engine(
        exported.bundle, precision="int8", calib_data=data, calib_size=8, backend="onnxruntime", bench_seconds=0
    )
    assert isinstance(built, BuildResult) and built.precision == "int8"
    assert set(built.artifacts) == {"model.int8.onnx", "model.int8.ort.onnx"}
    assert built.manifest.artifacts["model.int8.onnx"]["role"] == "typed"
    assert built.manifest.data["calibration"]["calibration_groups"] == 8
    assert Manifest.load(exported.bundle).artifacts.keys() == built.manifest.artifacts.keys()  # what is on disk

    report = muxdeploy.validate(exported.bundle, data, backend="onnxruntime", precision="int8")
    assert isinstance(report, ValidationReport)
    assert report.count == 48 and report.checkpoint == str(tiny_ckpt) and report.num_instances == 4
    assert "int8" in report.runtime_backend and 0 <= report.agreement <= 1
    assert report.to_dict()["instances"] == 48


def test_bench_returns_a_report(tiny_bundle: Path) -> None:
    lines: list[str] = []
    report = muxdeploy.bench(tiny_bundle, seconds=0.2, scenario="offline", echo=lines.append)
    assert isinstance(report, BenchReport) and report.server is None
    assert report.offline is not None and report.offline.instances_per_s > 0
    assert report.offline.instances_per_step == report.max_batch * report.num_instances == 32
    assert list(report.to_dict()) == ["bundle", "backend", "num_instances", "max_batch", "offline"]
    assert lines[0].startswith(f"bench {tiny_bundle}: onnxruntime-cpu") and lines[1].startswith("offline (")


def test_errors_are_typed_and_one_line(tiny_ckpt: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"^--n 3 does not match the checkpoint's num_instances 4"):
        muxdeploy.export(tiny_ckpt, n=3, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    bundle = copy_bundle(tiny_bundle, tmp_path / "copy")
    with pytest.raises(UserInputError, match=r"^unknown precision 'fp4'"):
        muxdeploy.build_engine(bundle, precision="fp4")
    with pytest.raises(UserInputError, match=r"^--int8 needs --calib-data FILE"):
        muxdeploy.build_engine(bundle, precision="int8")
    with pytest.raises(UserInputError, match=r"^--limit must be >= 1, got 0"):
        muxdeploy.validate(bundle, tmp_path / "none.jsonl", limit=0)
    with pytest.raises(UserInputError, match=r"^unknown scenario 'batch'"):
        muxdeploy.bench(bundle, scenario="batch")


def test_importing_the_api_loads_nothing_heavy() -> None:
    """`import muxdeploy` and `muxdeploy.export` (the attribute) load no torch, onnx or onnxruntime."""
    import subprocess

    code = (
        "import sys, muxdeploy\nassert callable(muxdeploy.export) and callable(muxdeploy.bench)\n"
        "print('LOADED', sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'muxdeploy.api') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED ['muxdeploy.api']" in out.stdout
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        muxdeploy.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("export", ["export", "ckpt.pt", "--n", "4"]),
        ("build_engine", ["build-engine", "b", "--fp16"]),
        ("validate_all", ["validate", "b", "--data", "d.jsonl"]),
        ("bench", ["bench", "b"]),
    ],
)
def test_the_cli_calls_the_api(function: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command hands its work to its API function (validate: validate_all); its error comes back as one line."""
    calls: list[tuple[tuple, dict]] = []

    def fake(*a: object, **kw: object) -> None:
        calls.append((a, kw))
        raise UserInputError(f"from api.{function}")

    monkeypatch.setattr(api, function, fake)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.output == f"error: from api.{function}\n"
    assert len(calls) == 1
