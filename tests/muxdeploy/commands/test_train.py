"""`muxdeploy train` on tiny settings: writes a loadable ckpt.pt; bad flags exit 2 with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main


def run(args: list[str]):
    return CliRunner().invoke(main, args)


def test_train_sentiment_writes_a_checkpoint(tmp_path: Path, sentiment_data: None) -> None:
    from muxdeploy.checkpoint import load_checkpoint

    out = tmp_path / "ckpt.pt"
    result = run(
        ["train", "--task", "sentiment", "--n", "2", "--seq-len", "16", "--limit", "40", "--steps", "3", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "dev accuracy" in result.output
    found = re.search(r"dev accuracy ([\d.]+)% on \d+ held-out sentences \(majority class ([\d.]+)%\)", result.output)
    assert found, result.output
    accuracy, majority = (float(x) / 100 for x in found.groups())
    assert ("is the majority-class rate" in result.output) == (accuracy <= majority + 0.005)
    ckpt = load_checkpoint(out)
    assert ckpt.config.num_instances == 2 and ckpt.config.seq_len == 16
    assert ckpt.labels == ["negative", "positive"]
    assert ckpt.tokenizer_json and '"[CLS]"' in ckpt.tokenizer_json
    assert ckpt.meta["steps"] == 3


def test_train_mnist_writes_a_vision_checkpoint_that_exports(tmp_path: Path) -> None:
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.training.datasets import FetchError, load_mnist

    try:
        load_mnist()
    except FetchError as exc:
        pytest.skip(f"registry unreachable: {exc}")
    out = tmp_path / "mnist.pt"
    result = run(["train", "--task", "mnist", "--n", "2", "--arch", "mlp", "--epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and f"wrote {out}" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.kind == "vision" and ckpt.config.num_instances == 2 and ckpt.meta["task"] == "mnist"
    exported = run(["export", str(out), "--n", "2", "-o", str(tmp_path / "b"), "--max-batch", "4"])
    assert exported.exit_code == 0, exported.output
    assert "image 1x" in exported.output


def test_train_mnist_refuses_text_flags(tmp_path: Path) -> None:
    result = run(["train", "--task", "mnist", "--seq-len", "8", "-o", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "--task mnist" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_train_retrieval_writes_a_checkpoint(tmp_path: Path) -> None:
    from muxdeploy.checkpoint import load_checkpoint

    out = tmp_path / "r.pt"
    result = run(["train", "--task", "retrieval", "--n", "2", "--seq-len", "4", "--steps", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "retrieval token accuracy" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.config.task == "retrieval" and ckpt.config.num_instances == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "huge"], "--preset"),
        (["--n", "0"], "--n"),
        (["--task", "retrieval", "--epochs", "2"], "--epochs"),
        (["--task", "translation"], "--task"),
        (["-o", "/nonexistent-dir/ckpt.pt"], "does not exist"),
        (["--muxing", "fourier"], "--muxing"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error") or line.startswith("Error")]
    assert len(lines) == 1 and needle in result.output
