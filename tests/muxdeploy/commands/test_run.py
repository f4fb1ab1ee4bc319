"""`muxdeploy run`: JSONL in, one answer a line out, bad lines answered with errors, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from muxdeploy.cli import main
from muxdeploy.runtimes.runtime import MuxRuntime

LINES = [
    '{"input_ids": [5, 6, 7], "id": "a"}',
    "[8, 9]",
    "",
    "not json",
    '{"input_ids": []}',
    '{"input_ids": [5, 1000]}',
    '{"other": 1}',
    '{"input_ids": [10, 11, 12, 13]}',
]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    return result.exit_code, result.output


def test_run_answers_every_line_in_place(tiny_bundle: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(LINES) + "\n")
    code, output = run(str(tiny_bundle), "--input", str(src), "--output", str(dst), "--chunk", "3")
    assert code == 2, output  # some lines failed: the answers are written, the exit code says so
    assert f"wrote {dst} (3 answered, 5 errors)" in output
    assert output.strip().splitlines()[-1] == (
        "error: 5 of 8 lines failed (first: line 3: empty line; expected a JSON object or list); their output "
        'lines hold {"error": ...}; fix them, or pass --allow-failures to exit 0'
    )
    again = tmp_path / "again.jsonl"
    code, output = run(str(tiny_bundle), "-i", str(src), "-o", str(again), "--chunk", "3", "--allow-failures")
    assert code == 0 and output.strip().splitlines()[-1] == "5 of 8 lines failed"
    assert again.read_text() == dst.read_text()
    src_ok = tmp_path / "ok.jsonl"
    src_ok.write_text("[5, 6]\n[7]\n")
    code, output = run(str(tiny_bundle), "-i", str(src_ok), "-o", str(tmp_path / "ok_out.jsonl"))
    assert code == 0 and output.strip().splitlines()[-1] == "all 2 lines answered"
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(out) == len(LINES)
    assert out[0]["id"] == "a" and set(out[0]) == {"id", "label", "label_id", "logits"}
    assert out[2] == {"error": "line 3: empty line; expected a JSON object or list"}
    assert out[3]["error"].startswith("line 4: not valid JSON")
    assert out[4] == {"error": "line 5: instance is empty; an instance needs at least one token"}
    assert "line 6: instance token id 1000 is outside the vocabulary" in out[5]["error"]
    assert "line 7: has none of the keys" in out[6]["error"]
    # each chunk of 3 lines is packed on its own, bad lines left out: lines 1-2 share a group, line 8 is alone
    with MuxRuntime(tiny_bundle) as rt:
        first, last = rt.predict([[5, 6, 7], [8, 9]]), rt.predict([[10, 11, 12, 13]])
    for got, want in zip((out[0], out[1], out[7]), (*first, *last), strict=True):
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
        assert got["label"] == want["label"]


def test_run_strict_stops_at_the_first_bad_line_and_writes_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("[5, 6]\n" + "[7, 1000]\n")
    code, output = run(str(tiny_bundle), "--input", str(src), "--output", str(dst), "--strict")
    assert code == 2
    assert "line 2: instance token id 1000 is outside the vocabulary" in output
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_run_names_missing_files(tiny_bundle: Path, tmp_path: Path) -> None:
    code, output = run(str(tiny_bundle), "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl"))
    assert code == 2 and "input file not found" in output
    code, output = run(str(tmp_path / "no_bundle"), "--input", __file__, "--output", str(tmp_path / "o.jsonl"))
    assert code == 2 and "bundle directory not found" in output


def test_cli_and_run_need_no_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    """An edge device installs numpy + a backend: loading the CLI (every command module) and running
    `muxdeploy run` must not import torch or onnx."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    src = tmp_path / "in.jsonl"
    src.write_text("[5, 6]\n")
    code = (
        "import sys\nfrom muxdeploy.cli import main\n"
        f"try:\n    main(['run', {str(tiny_bundle)!r}, '-i', {str(src)!r}, '-o', {str(tmp_path / 'o.jsonl')!r}])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
