"""`muxdeploy train` on tiny settings: writes a loadable ckpt.pt; bad flags exit 2 with one line."""

from __future__ import annotations

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
    ckpt = load_checkpoint(out)
    assert ckpt.config.num_instances == 2 and ckpt.config.seq_len == 16
    assert ckpt.labels == ["negative", "positive"]
    assert ckpt.tokenizer_json and '"[CLS]"' in ckpt.tokenizer_json
    assert ckpt.meta["steps"] == 3


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
