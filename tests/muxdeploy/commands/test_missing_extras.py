"""A command whose install extra is missing says which one to install: one line, exit code 2, nothing written.

The modules are hidden by making muxdeploy.core.extras report them as not installed (they are imported in this
process already); tests/test_install.py checks the same on a real base install.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main
from muxdeploy.core import extras


@pytest.mark.parametrize(
    ("args", "missing", "extra"),
    [
        (["export", "{ckpt}", "--n", "4", "-o", "{tmp}/out"], {"torch", "onnx"}, "export"),
        (["export", "{ckpt}", "--n", "4", "-o", "{tmp}/out"], {"onnxruntime"}, "cpu"),
        (["train", "--task", "retrieval", "-o", "{tmp}/out/c.pt"], {"torch"}, "export"),
        (["validate", "{bundle}", "--data", "{tmp}/dev.jsonl"], {"torch"}, "export"),
        (["build-engine", "{bundle}", "--fp16"], {"onnx"}, "export"),
        (["build-engine", "{bundle}", "--backend", "onnxruntime"], {"onnxruntime"}, "cpu"),
        (["demo", "--workdir", "{tmp}/out"], {"onnxscript"}, "export"),
        (["bench", "{bundle}", "--sweep-n", "1,2"], {"torch"}, "export"),
        (["serve", "{bundle}"], {"starlette", "uvicorn"}, "serve"),
    ],
)
def test_missing_extra_is_named_in_one_line(
    args: list[str],
    missing: set[str],
    extra: str,
    tiny_ckpt: Path,
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = sorted(p.name for p in bundle.iterdir())
    monkeypatch.setattr(extras, "installed", lambda module: module not in missing)
    argv = [a.format(ckpt=tiny_ckpt, bundle=bundle, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: muxdeploy {args[0]}")
    assert all(module in lines[0] for module in missing) and f"pip install 'muxdeploy[{extra}]'" in lines[0]
    assert sorted(p.name for p in bundle.iterdir()) == before and not (tmp_path / "out").exists()


def test_run_bench_inspect_need_no_extra(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base install's commands never ask for an extra (onnxruntime is the backend, found by the runtime)."""
    monkeypatch.setattr(extras, "installed", lambda module: module == "onnxruntime")
    (tmp_path / "in.jsonl").write_text("[5, 6]\n")
    for argv in (
        ["run", str(tiny_bundle), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")],
        ["bench", str(tiny_bundle), "--seconds", "0.1", "--scenario", "offline"],
        ["inspect", str(tiny_bundle)],
    ):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output)
