"""export-triton: repository layout, and the real tritonserver (from nvidia-pytriton) serving it.

The server test needs the `nvidia-pytriton==0.7.0` wheel (tritonserver 2.51 with the Python backend,
CPU-only capable) in this interpreter or in the venv named by MUXDEPLOY_TRITON_VENV, whose Python
runs the Python-backend models (Triton's EXECUTION_ENV_PATH): it needs numpy<2 (the wheel's Python
backend reads numpy 1.x arrays) and onnxruntime. It skips with the reason when that is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_modules import load_bench_module
from click.testing import CliRunner
from serving_helpers import check_answers, random_instances

from muxdeploy.cli import main
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.tensorrt import TRT_FLAVORS
from muxdeploy.exporters.triton import export_triton, preferred_sizes

triton_local = load_bench_module("triton_local")  # the local tritonserver harness lives with the benchmarks


def test_default_repository_layout(retrieval_bundle: Path, tmp_path: Path) -> None:
    repo = export_triton(retrieval_bundle, tmp_path / "repo", name="mux")
    cfg = (tmp_path / "repo" / "mux" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "max_batch_size: 32" in cfg
    assert "preferred_batch_size: [ 4, 8, 16, 32 ]" in cfg and "dims: [ 8 ]" in cfg and "dims: [ 8, 64 ]" in cfg
    assert (tmp_path / "repo" / "mux" / "1" / "model.onnx").read_bytes() == (
        retrieval_bundle / "model.instance_batch.onnx"
    ).read_bytes()
    assert repo.models == {"mux": "onnxruntime_onnx"}
    with pytest.raises(UserInputError, match="--force"):
        export_triton(retrieval_bundle, tmp_path / "repo", name="mux")
    with pytest.raises(UserInputError, match="build-engine"):
        export_triton(retrieval_bundle, tmp_path / "trt", engine_backend="tensorrt")


def test_instance_batch_is_built_when_missing(tiny_bundle: Path, tmp_path: Path) -> None:
    assert "model.instance_batch.onnx" not in Manifest.load(tiny_bundle).artifacts
    export_triton(tiny_bundle, tmp_path / "repo")
    assert (tmp_path / "repo" / "muxdeploy" / "1" / "model.onnx").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging left behind


def test_preferred_sizes_are_multiples_of_n() -> None:
    assert preferred_sizes(4, 32) == [4, 8, 16, 32]
    assert preferred_sizes(10, 640) == [10, 20, 40, 80, 160, 320, 640]
    assert preferred_sizes(3, 12) == [3, 6, 12]


def test_cli_packer_repository(retrieval_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["export-triton", str(retrieval_bundle), "-o", str(out), "--packer", "python"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'muxdeploy' / '1' / 'model.py'}" in result.output
    assert (out / "muxdeploy" / "1" / "muxdeploy" / "runtimes" / "packing.py").read_text() == Path(
        "runtimes/packing.py"
    ).read_text()
    engine = (out / "muxdeploy_engine" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in engine and "dims: [ 4, 8 ]" in engine and "dims: [ 4, 8, 64 ]" in engine
    packer = (out / "muxdeploy" / "config.pbtxt").read_text()
    assert 'backend: "python"' in packer and "allow_ragged_batch: true" in packer and '"muxdeploy_engine"' in packer
    bad = CliRunner().invoke(
        main, ["export-triton", str(retrieval_bundle), "-o", str(tmp_path / "x"), "--python-env", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "bin/activate" in bad.output


# ---- the real server ---------------------------------------------------------------------------------------------
def _answer(body: dict[str, Any], length: int, seq_len: int = 8, vocab: int = 64) -> list[int]:
    out = body["outputs"][0]
    logits = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    assert tuple(out["shape"]) == (1, seq_len, vocab)
    return logits[0].argmax(axis=-1)[:length].tolist()


@pytest.mark.slow
@pytest.mark.skipif(triton_local.problem() is not None, reason=str(triton_local.problem()))
def test_real_tritonserver(retrieval_bundle: Path, tmp_path: Path) -> None:
    site_packages, venv = triton_local.find_pytriton()  # type: ignore[misc]
    packer = export_triton(
        retrieval_bundle,
        tmp_path / "packer",
        name="mux",
        packer="python",
        engine_backend="python-onnxruntime",
        python_env=venv,
        max_queue_delay_us=20000,
    )
    export_triton(
        retrieval_bundle,
        tmp_path / "inst",
        name="mux_inst",
        engine_backend="python-onnxruntime",
        python_env=venv,
        max_queue_delay_us=20000,
    )
    export_triton(retrieval_bundle, tmp_path / "ort", name="mux_ort", engine_backend="onnxruntime")
    # a bundle with a TensorRT engine entry: the generated tensorrt_plan config must parse
    trt_bundle = tmp_path / "trt_bundle"
    shutil.copytree(retrieval_bundle, trt_bundle)
    (trt_bundle / "engine.instances.fp16.plan").write_bytes(b"not a real plan: the backend is missing anyway")
    manifest = Manifest.load(trt_bundle)
    manifest.add_artifact("engine.instances.fp16.plan", "tensorrt", "fp16", signature="instances")
    manifest.save()
    export_triton(trt_bundle, tmp_path / "trt", name="mux_trt")
    assert 'platform: "tensorrt_plan"' in (tmp_path / "trt" / "mux_trt" / "config.pbtxt").read_text()
    assert packer.models == {"mux_engine": "python", "mux": "python (packer)"}

    server = triton_local.LocalTritonServer(
        site_packages, [tmp_path / d for d in ("packer", "inst", "ort", "trt")], tmp_path
    )
    try:
        for name in ("mux_ort", "mux_trt"):
            status, body = server.load(name)
            assert status == 400 and "unable to find backend library" in body["error"], (name, body)
        for name in ("mux_engine", "mux", "mux_inst"):
            status, body = server.load(name)
            assert status == 200, (name, body, server.log.read_text()[-3000:])

        instances = random_instances(96, seed=3, min_len=3)
        bad = {5: [9, 70], 17: [64], 40: [-1, 9]}  # out-of-vocabulary ids: their own requests fail
        requests = [bad.get(i, inst) for i, inst in enumerate(instances)]

        def call_packer(i: int) -> tuple[int, int, Any]:
            return (i, *server.infer("mux", [requests[i]]))

        def call_inst(i: int) -> tuple[int, int, Any]:
            padded = (instances[i] + [0] * 8)[:8]
            return (i, *server.infer("mux_inst", [padded]))

        with ThreadPoolExecutor(16) as pool:
            packed = list(pool.map(call_packer, range(len(requests))))
            inst = list(pool.map(call_inst, range(len(instances))))
        answers = []
        for i, status, body in packed:
            if i in bad:
                assert status == 400 and "outside the vocabulary" in body["error"], (i, body)
            else:
                assert status == 200, (i, body)
                answers.append((_answer(body, len(instances[i])), instances[i]))
        check_answers(answers)
        answers = []
        for i, status, body in inst:
            assert status == 200, (i, body)
            answers.append((_answer(body, len(instances[i])), instances[i]))
        check_answers(answers)

        # the packer really batched across requests: fewer engine runs (BLS) than answered requests
        _, stats = triton_local.http_json("GET", f"{server.url}/v2/models/mux_engine/stats")
        engine_runs = stats["model_stats"][0]["execution_count"]
        _, stats = triton_local.http_json("GET", f"{server.url}/v2/models/mux/stats")
        assert stats["model_stats"][0]["execution_count"] < len(requests)
        assert 1 <= engine_runs < len(requests) - len(bad)
    finally:
        server.stop()


def test_packer_over_a_tensorrt_engine(retrieval_bundle: Path, tmp_path: Path) -> None:
    """A grouped TensorRT engine (as build-engine records it) becomes a tensorrt_plan model; its max batch wins."""
    bundle = tmp_path / "bundle"
    shutil.copytree(retrieval_bundle, bundle)
    (bundle / "engine.fp16.plan").write_bytes(b"plan bytes")
    manifest = Manifest.load(bundle)
    manifest.add_artifact(
        "engine.fp16.plan", "tensorrt", "fp16", build_flags={"profile": {"min": 1, "opt": 2, "max": 2}}
    )
    manifest.save()
    repo = export_triton(bundle, tmp_path / "repo", name="m", packer="python")
    assert repo.models == {"m_engine": "tensorrt_plan", "m": "python (packer)"}
    engine = (tmp_path / "repo" / "m_engine" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in engine and "max_batch_size: 2" in engine and "KIND_GPU" in engine
    assert (tmp_path / "repo" / "m_engine" / "1" / "model.plan").read_bytes() == b"plan bytes"
    packer = (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert 'key: "engine_max_batch"\n  value: { string_value: "2" }' in packer and "max_batch_size: 8" in packer
    # without --packer, a grouped engine is not an instance-batched one: onnxruntime_onnx serves
    assert export_triton(bundle, tmp_path / "inst", name="m").models == {"m": "onnxruntime_onnx"}


def test_build_engine_needs_tensorrt(retrieval_bundle: Path, tmp_path: Path) -> None:
    """Without TensorRT (or its builder) --build-engine stops with one line and exit 2, before writing a repo."""
    bundle = tmp_path / "bundle"
    shutil.copytree(retrieval_bundle, bundle)
    result = CliRunner().invoke(
        main, ["export-triton", str(bundle), "-o", str(tmp_path / "repo"), "--build-engine", "fp16"]
    )
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and result.output.splitlines()[-1] == errors[0]
    assert not (tmp_path / "repo").exists()
    result = CliRunner().invoke(
        main,
        ["export-triton", str(bundle), "-o", str(tmp_path / "repo"), "--build-engine", "fp32", "--packer", "python"],
    )
    assert result.exit_code == 2 and "build-engine" in result.output


@pytest.mark.skipif(
    not any(importlib.util.find_spec(n) for n in TRT_FLAVORS["tensorrt-rtx"]),
    reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)",
)
def test_build_engine_then_serve_it_under_the_given_name(tiny_bundle: Path, tmp_path: Path) -> None:
    """--build-engine builds the instance-batched engine for real (TensorRT for RTX builds on CPU), then writes the
    repository under --name: the engine's file name must not replace the model name clients call."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    out = tmp_path / "repo"
    args = ["export-triton", str(bundle), "-o", str(out), "--name", "mux", "--build-engine", "fp32"]
    result = CliRunner().invoke(main, [*args, "--tensorrt-module", "tensorrt-rtx"])
    assert result.exit_code == 0, result.output
    plan = "engine.instances.fp32.rtx.plan"
    assert f"wrote {bundle}/{plan}" in result.output and "model mux: tensorrt_plan" in result.output
    artifacts = Manifest.load(bundle).artifacts
    entry, wrapped = artifacts[plan], artifacts["model.instance_batch.onnx"]
    assert entry["format"] == "tensorrt-rtx" and entry["signature"] == "instances" and entry["max_instances"] == 32
    assert entry["build_flags"]["profile"] == {"min": 1, "opt": 32, "max": 32}
    assert wrapped["signature"] == "instances" and wrapped["source"] == "model.onnx"
    assert wrapped["parity"]["max_abs_diff"] <= 1e-3
    assert (out / "mux" / "1" / "model.plan").read_bytes() == (bundle / plan).read_bytes()
    cfg = (out / "mux" / "config.pbtxt").read_text()
    assert 'name: "mux"' in cfg and 'platform: "tensorrt_plan"' in cfg and "max_batch_size: 32" in cfg
    found = triton_local.find_pytriton()
    if found is None:  # CI has it (MUXDEPLOY_TRITON_VENV); a developer's machine may not
        assert os.environ.get("CI") != "true", "CI must have the pytriton tritonserver ($MUXDEPLOY_TRITON_VENV)"
        return
    # the real tritonserver parses the repository under --name, up to the TensorRT backend this build lacks
    server = triton_local.LocalTritonServer(found[0], [out], tmp_path)
    try:
        status, body = server.load("mux")
        assert status == 400 and "unable to find backend library" in body["error"], body
    finally:
        server.stop()
