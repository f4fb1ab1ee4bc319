"""The README's edge install, for real: a wheel of this checkout in a fresh venv.

`pip wheel --no-deps -w dist .` then `pip install "dist/muxdeploy-*.whl[cpu]"`: the wheel puts one top-level
package (muxdeploy) into site-packages; the base install runs `muxdeploy run`, `bench` and `inspect` on a bundle
with neither torch nor onnx importable; `muxdeploy export` there names the extra to install (one line, exit 2).
One venv for the module (~40 s, from the local package index: no network needed where pip has one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This process's environment (pip's index settings) without anything that points at the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _run(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out


def _checkout_copy(dest: Path) -> Path:
    """The files a clone of this checkout has (tracked, plus untracked ones git does not ignore), nothing built."""
    listed = _run("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT).stdout.splitlines()
    for name in listed:
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel of this checkout and a fresh venv holding its base install (no extras)."""
    root = tmp_path_factory.mktemp("install")
    src = _checkout_copy(root / "src")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", src, cwd=root)
    (wheel,) = (root / "dist").glob("muxdeploy-*.whl")
    _run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    bin_dir = root / "venv" / "bin"
    _run(bin_dir / "pip", "install", "-q", wheel, cwd=root)
    return {"root": root, "wheel": wheel, "bin": bin_dir}


def _site_python(edge: dict[str, Path], code: str) -> str:
    return _run(edge["bin"] / "python", "-c", code, cwd=edge["root"]).stdout


def test_the_wheel_installs_one_top_level_package(edge: dict[str, Path]) -> None:
    """RECORD lists every installed file: all of them are under muxdeploy/ (or its dist-info, or the script)."""
    code = (
        "import json\nfrom importlib import metadata\nd = metadata.distribution('muxdeploy')\n"
        "print(json.dumps({'files': [str(f) for f in d.files], 'top_level': d.read_text('top_level.txt')}))"
    )
    found = json.loads(_site_python(edge, code))
    tops = {f.split("/")[0] for f in found["files"] if not f.startswith("..") and ".dist-info" not in f.split("/")[0]}
    assert tops == {"muxdeploy"}
    assert found["top_level"].split() == ["muxdeploy"]
    packaged = {f for f in found["files"] if f.endswith(".py")}
    assert {"muxdeploy/runtimes/runtime.py", "muxdeploy/exporters/onnx.py", "muxdeploy/api.py"} <= packaged


def test_export_on_the_base_install_names_the_extra(edge: dict[str, Path], tiny_ckpt: Path) -> None:
    out = _run(edge["bin"] / "muxdeploy", "export", tiny_ckpt, "--n", "4", cwd=edge["root"], check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: muxdeploy export needs torch, onnx, onnxscript")
    assert "pip install 'muxdeploy[export" in line
    assert not (edge["root"] / "mux_model").exists()


def test_base_install_with_a_backend_runs_a_bundle(edge: dict[str, Path], tiny_bundle: Path) -> None:
    """Without a backend `run` says what to install; with the [cpu] extra run, bench and inspect work, torch-free."""
    muxdeploy, root = edge["bin"] / "muxdeploy", edge["root"]
    (root / "in.jsonl").write_text('[5, 6, 7]\n{"input_ids": [9]}\n')
    run = (muxdeploy, "run", tiny_bundle, "-i", root / "in.jsonl", "-o", root / "out.jsonl")
    missing = _run(*run, cwd=root, check=False)
    (line,) = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and line.startswith("error: onnxruntime is not installed here")
    assert "pip install 'muxdeploy[cpu]'" in line
    assert "onnxruntime is not installed" in _run(muxdeploy, "inspect", tiny_bundle, cwd=root).stdout

    _run(edge["bin"] / "pip", "install", "-q", f"{edge['wheel']}[cpu]", cwd=root)
    absent = "import importlib.util as u\nprint([m for m in ('torch', 'onnx', 'onnxscript') if u.find_spec(m)])"
    assert _site_python(edge, absent).strip() == "[]"
    _run(*run, cwd=root)
    answers = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(a["label"] in ("neg", "neutral", "pos") for a in answers)
    bench = _run(muxdeploy, "bench", tiny_bundle, "--seconds", "0.2", "--scenario", "offline", "--json", cwd=root)
    assert json.loads(bench.stdout)["offline"]["instances_per_s"] > 0
    assert "onnxruntime-cpu" in _run(muxdeploy, "inspect", tiny_bundle, cwd=root).stdout


def _readme_build_engine_lines() -> list[list[str]]:
    """The `muxdeploy build-engine` lines of the README's "From checkpoint to deployment" block, as argv lists."""
    import shlex

    text = (ROOT / "README.md").read_text()
    block = text.split("## From checkpoint to deployment", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("muxdeploy build-engine")]


def test_readme_build_engine_lines_exit_0_without_tensorrt(edge: dict[str, Path], tiny_bundle: Path) -> None:
    """Issue 16 item 5: a new user's `build-engine --fp16` / `--int8 --calib-data dev.jsonl`, as the README writes
    them, on the README's install (`[export,cpu]`, CPU torch first) of a machine without TensorRT: exit 0, and the
    first line says what was built instead and why. Without torch the same lines stop at once naming [export]
    (onnxruntime's transformer optimizer imports torch). Runs last in this module (it adds torch to the venv)."""
    commands = _readme_build_engine_lines()
    assert [c[:3] for c in commands] == [
        ["muxdeploy", "build-engine", "--fp16"],
        ["muxdeploy", "build-engine", "--int8"],
    ]
    root, bin_dir = edge["root"] / "readme", edge["bin"]
    root.mkdir()
    shutil.copytree(tiny_bundle, root / "mux_model")
    rows = [{"input_ids": [5 + (i * 7) % 900, 6 + i % 50, 9], "label": i % 3} for i in range(48)]
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(bin_dir / "pip", "install", "-q", f"{edge['wheel']}[cpu]", "onnx>=1.16", cwd=root)
    early = _run(bin_dir / "muxdeploy", "build-engine", "--fp16", cwd=root, check=False)
    assert early.returncode == 2 and "needs torch" in early.stderr and "muxdeploy[export]" in early.stderr
    _run(bin_dir / "pip", "install", "-q", "torch==2.13.0", cwd=root)  # the README's CPU torch first
    _run(bin_dir / "pip", "install", "-q", f"{edge['wheel']}[export,cpu]", cwd=root)
    no_trt = "import importlib.util as u\nprint([m for m in ('tensorrt', 'tensorrt_rtx') if u.find_spec(m)])"
    assert _site_python(edge, no_trt).strip() == "[]"
    for argv in commands:
        out = _run(bin_dir / argv[0], *argv[1:], cwd=root, check=False)
        assert out.returncode == 0, f"{argv}: {out.stdout[-1500:]}{out.stderr[-1500:]}"
        assert out.stdout.splitlines()[0].startswith("backend: onnxruntime (no tensorrt module here"), out.stdout
    manifest = json.loads((root / "mux_model" / "muxdeploy.json").read_text())
    assert {"model.fp16.onnx", "model.fp16.ort.onnx", "model.int8.onnx", "model.int8.ort.onnx"} <= set(
        manifest["artifacts"]
    )
