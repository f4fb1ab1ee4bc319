"""`muxdeploy demo` end to end on a small subset: it really trains, exports and runs the ONNX on onnxruntime."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from muxdeploy.cli import main


def test_demo_small_end_to_end(tmp_path: Path, sentiment_data: None) -> None:
    work = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", "--train", "--n", "4", "--workdir", str(work), "--limit", "80", "--steps", "4"]
    )
    assert result.exit_code == 0, result.output
    for name in ("ckpt.pt", "mux_model/model.onnx", "mux_model/muxdeploy.json", "mux_model/tokenizer.json"):
        assert (work / name).is_file(), name
    assert "agreement PyTorch vs ONNX: 100.00% of 20 held-out sentences" in result.output
    assert "N=4 instances per pass" in result.output
    assert f"wrote bundle: {work / 'mux_model'}" in result.output


def test_demo_reuse_says_so(tmp_path: Path, sentiment_data: None) -> None:
    work = tmp_path / "demo"
    args = ["demo", "--train", "--n", "2", "--workdir", str(work), "--limit", "40", "--steps", "2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, [*args, "--reuse"])
    assert result.exit_code == 0, result.output
    assert f"reusing the cached checkpoint {work / 'ckpt.pt'}" in result.output
    assert "[1/3] training" not in result.output
    refused = CliRunner().invoke(
        main, ["demo", "--train", "--n", "3", "--workdir", str(work), "--limit", "40", "--reuse"]
    )
    assert refused.exit_code == 2 and "drop --reuse" in refused.output


def test_demo_workdir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "f")])
    assert result.exit_code == 2
