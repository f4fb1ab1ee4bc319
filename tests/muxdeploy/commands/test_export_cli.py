"""`muxdeploy export`: the bundle and the parity on success; one `error:` line and exit code 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from reference_dirs import make_reference_dir, single_torch_thread

from muxdeploy.cli import main
from muxdeploy.core.manifest import Manifest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_error_line(result, *words: str) -> str:
    """Exit code 2 and exactly one line on stderr, `error: ...` containing `words`; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


class Opaque:
    """A custom class: pickling an instance of it makes a file that needs code to load."""

    def __init__(self) -> None:
        self.value = 1


# ---- success --------------------------------------------------------------------------------------------


def test_export_writes_bundle_and_prints_parity(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli("export", tiny_ckpt, "--n", "4", "-o", out, "--max-batch", "4")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "parity vs PyTorch: max abs diff" in result.stdout
    assert f"wrote {out / 'model.onnx'}" in result.stdout and f"wrote {out / 'muxdeploy.json'}" in result.stdout
    manifest = Manifest.load(out)
    assert manifest.num_instances == 4 and manifest.max_batch == 4
    printed = float(result.stdout.split("max abs diff ")[1].split()[0])
    assert printed == pytest.approx(manifest.data["parity"]["export"]["max_abs_diff"], rel=0.01, abs=1e-12)
    assert manifest.verify_artifact("model.onnx")


def test_export_reference_dir_with_seq_len(tmp_path: Path) -> None:
    """A reference dir whose position table cannot hold the default L=128: --seq-len must reach the loader."""
    small = {"num_instances": 2, "hidden": 16, "layers": 1, "heads": 2, "intermediate": 32, "max_positions": 40}
    ref, _, _ = make_reference_dir(tmp_path / "ref", muxing="random_ortho", token=True, **small)
    (ref / "tokenizer.json").write_text('{"version": "1.0", "model": {}}')
    out = tmp_path / "mux_model"
    result = run_cli("export", ref, "--n", "2", "--seq-len", "12", "-o", out, "--max-batch", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'tokenizer.json'}" in result.stdout
    manifest = Manifest.load(out)
    assert manifest.seq_len == 12 and manifest.task == "token_classification"
    assert manifest.data["outputs"][0]["shape"] == ["B", 2, 12, 3]
    assert manifest.labels == ["LABEL_A", "LABEL_B", "LABEL_C"] and manifest.pad_token_id == 1
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0", "model": {}}'
    # without --seq-len the default (128) does not fit: a clear error that names the flag
    assert_one_error_line(
        run_cli("export", ref, "--n", "2", "-o", tmp_path / "x"), "seq_len 128", "--seq-len 35 or less"
    )
    assert not (tmp_path / "x").exists()


# ---- bad input -----------------------------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("export", tmp_path / "nope.pt", "--n", "4", "-o", tmp_path / "o"), "not found")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [os.urandom(2048), b"just some text\nover two lines\n"], ids=["random", "text"])
def test_non_checkpoint_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    assert_one_error_line(run_cli("export", path, "--n", "4", "-o", tmp_path / "o"), "not a PyTorch checkpoint")
    assert not (tmp_path / "o").exists()


def test_pickle_that_needs_code(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": Opaque()}, path)
    assert_one_error_line(run_cli("export", path, "--n", "4", "-o", tmp_path / "o"), "arbitrary code", "Opaque")


def test_n_mismatch(tiny_ckpt: Path, tmp_path: Path) -> None:
    line = assert_one_error_line(run_cli("export", tiny_ckpt, "--n", "8", "-o", tmp_path / "o"), "--n 8", "--n 4")
    assert "num_instances 4" in line
    assert not (tmp_path / "o").exists()


def test_unwritable_output(tiny_ckpt: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory")
    assert_one_error_line(run_cli("export", tiny_ckpt, "--n", "4", "-o", blocker / "out"), str(blocker / "out"), "-o")
    assert_one_error_line(run_cli("export", tiny_ckpt, "--n", "4", "-o", blocker), "not a directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(
    "flags, words",
    [(["--opset", "30"], ["--opset 30", "18..22"]), (["--seq-len", "5000"], ["seq_len 5000", "--seq-len 58 or less"])],
)
def test_bad_numbers(tiny_ckpt: Path, tmp_path: Path, flags: list[str], words: list[str]) -> None:
    assert_one_error_line(run_cli("export", tiny_ckpt, "--n", "4", "-o", tmp_path / "o", *flags), *words)
    assert not (tmp_path / "o").exists()


def test_reference_dir_without_instance_embedding(tmp_path: Path) -> None:
    from reference_dirs import reference_config, reference_state_dict, write_reference_dir

    cfg = reference_config(num_instances=2, hidden=16, layers=1, heads=2, intermediate=32)
    state = reference_state_dict(cfg)
    del state["instance_embedding"]
    ref = write_reference_dir(tmp_path / "ref", cfg, state, ("bin",))
    assert_one_error_line(run_cli("export", ref, "--n", "2", "-o", tmp_path / "o"), "instance_embedding")


def test_help_teaches() -> None:
    result = run_cli("export", "--help")
    assert result.exit_code == 0
    for flag in ("--n", "--out", "--seq-len", "--max-batch", "--opset", "--task"):
        assert flag in result.stdout


# ---- the real console path -------------------------------------------------------------------------------


def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "muxdeploy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_console_bad_inputs_give_one_error_line(tmp_path: Path, tiny_ckpt: Path) -> None:
    """`python -m muxdeploy export` in a fresh process: no traceback, no warnings, one line, exit code 2."""
    evil = tmp_path / "evil.pt"
    torch.save({"model": Opaque()}, evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(__import__("pickle").dumps({"a": [1, 2]}, protocol=4))  # torch warns about protocol 4
    cases = [
        ([evil, "--n", "4"], "arbitrary code"),
        ([plain, "--n", "4"], "not a PyTorch checkpoint"),
        ([tiny_ckpt, "--n", "3"], "--n 3"),
    ]
    for args, word in cases:
        proc = _console("export", *args, "-o", tmp_path / "out", cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "plain.pkl"]


def test_console_debug_shows_traceback(tmp_path: Path) -> None:
    proc = _console("--debug", "export", tmp_path / "nope.pt", "--n", "4", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserInputError" in proc.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["export"], ["Missing argument", "export --help"]),
        (["export", "ckpt.pt"], ["Missing option '--n'"]),
        (["export", "ckpt.pt", "--n", "ten"], ["'ten' is not a valid integer"]),
        (["exprot"], ["No such command"]),
    ],
)
def test_usage_errors_are_one_line(args: list[str], words: list[str]) -> None:
    assert_one_error_line(run_cli(*args), *words)
