"""Backend and artifact choice, engine files that are corrupted, foreign or built elsewhere."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import ManifestError, UserInputError
from muxdeploy.core.manifest import Manifest, sha256_file
from muxdeploy.runtimes.backends import Backend, MissingDependency, Selection, create, select
from muxdeploy.runtimes.backends.engine_facts import engine_mismatch
from muxdeploy.runtimes.runtime import MuxRuntime

ENGINE = "engine.fp16.plan"
FACTS = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "max_batch": 8}


def add_engine(bundle: Path, payload: bytes) -> Manifest:
    """Put a file in the bundle and record it as an fp16 engine (sha256 of `payload`)."""
    (bundle / ENGINE).write_bytes(payload)
    manifest = Manifest.load(bundle)
    manifest.add_artifact(ENGINE, "tensorrt", "fp16", **FACTS)
    manifest.save()
    return Manifest.load(bundle)


def test_auto_falls_back_to_onnxruntime_without_tensorrt(bundle_copy: Path) -> None:
    manifest = add_engine(bundle_copy, os.urandom(256))
    assert select(manifest) == Selection("onnxruntime-cpu", "model.onnx", "fp32")


def test_explicit_tensorrt_checks_sha256_first(bundle_copy: Path) -> None:
    manifest = add_engine(bundle_copy, os.urandom(256))
    (bundle_copy / ENGINE).write_bytes(os.urandom(256))  # corrupted after the manifest was written
    with pytest.raises(ManifestError, match=r"engine.fp16.plan does not match the sha256 .* rebuild it"):
        select(manifest, "tensorrt")
    (bundle_copy / ENGINE).write_bytes((bundle_copy / "model.onnx").read_bytes())  # a foreign file in its place
    with pytest.raises(ManifestError, match="does not match the sha256"):
        MuxRuntime(bundle_copy, backend="tensorrt")


def test_no_backend_installed_names_the_extras(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime (and no TensorRT engine to run) the choice fails in one line naming the extras."""
    from muxdeploy.runtimes import backends

    monkeypatch.setattr(backends, "installed", lambda module: module != "onnxruntime")
    manifest = Manifest.load(bundle_copy)
    for backend in ("auto", "onnxruntime", "onnxruntime-cpu"):
        with pytest.raises(MissingDependency, match=r"^onnxruntime is not installed here; .*'muxdeploy\[cpu\]'"):
            select(manifest, backend)
    chosen, why = backends.explain_choice(manifest)
    assert chosen is None and "pip install 'muxdeploy[cpu]'" in why


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_explicit_tensorrt_without_tensorrt_says_what_to_install(bundle_copy: Path) -> None:
    manifest = add_engine(bundle_copy, os.urandom(256))
    with pytest.raises(
        MissingDependency, match=r"needs the tensorrt Python module.*pip install 'muxdeploy\[tensorrt\]'"
    ):
        select(manifest, "tensorrt")


def test_missing_engine_precision_is_named(bundle_copy: Path) -> None:
    manifest = add_engine(bundle_copy, os.urandom(64))
    with pytest.raises(UserInputError, match=r"no int8 TensorRT engine \(has engine.fp16.plan \(fp16\)\)"):
        select(manifest, "tensorrt", "int8")
    with pytest.raises(UserInputError, match="has no TensorRT engine"):
        select(_without_engines(manifest), "tensorrt")


def _without_engines(manifest: Manifest) -> Manifest:
    data = json.loads(json.dumps(manifest.data))
    data["artifacts"] = {k: v for k, v in data["artifacts"].items() if v["format"] != "tensorrt"}
    return Manifest(data, manifest.bundle)


def test_engine_mismatch_uses_the_recorded_facts() -> None:
    orin, h100, turing = ("Orin", (8, 7)), ("NVIDIA H100", (9, 0)), ("T4", (7, 5))
    assert engine_mismatch(FACTS, have="10.3.0", gpu=orin) is None
    assert engine_mismatch(FACTS, have="10.7.0", gpu=orin) == (
        "it was built with TensorRT 10.3.0, this machine has 10.7.0 (plans need the same version)"
    )
    assert "built for Orin (compute capability 8.7), this GPU is NVIDIA H100 (compute capability 9.0)" in (
        engine_mismatch(FACTS, have="10.3.0", gpu=h100) or ""
    )
    compatible = {**FACTS, "version_compatible": True, "hardware_compatibility_level": "AMPERE_PLUS"}
    assert engine_mismatch(compatible, have="10.7.0", gpu=h100) is None
    assert engine_mismatch(compatible, have="11.0.0", gpu=h100) is None  # review #11: 10 VC plans run on 11
    assert "same or newer" in (engine_mismatch(compatible, have="10.2.0", gpu=h100) or "")
    assert "Ampere and newer" in (engine_mismatch(compatible, have="10.3.0", gpu=turing) or "")
    assert engine_mismatch({}, have="10.3.0", gpu=None) is None  # nothing recorded: nothing to hold against it


def test_rtx_plans_are_checked_against_their_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #12: an RTX plan recorded by either import name runs through whichever RTX module is installed."""
    from muxdeploy.runtimes.backends import engine_facts

    orin, h100 = ("Orin", (8, 7)), ("NVIDIA H100", (9, 0))
    for module in ("tensorrt_rtx", "tensorrt_rtx_bindings"):
        rtx = {**FACTS, "tensorrt_module": module, "tensorrt_version": "1.7.1", "hardware_compatibility_level": "none"}
        assert engine_facts.engine_modules(rtx) == ("tensorrt_rtx", "tensorrt_rtx_bindings")
        assert "TensorRT-RTX plans run on compute capability" in (engine_mismatch(rtx, have="1.7.1", gpu=h100) or "")
    monkeypatch.setitem(engine_facts.TRT_FLAVORS, "tensorrt-rtx", ("muxdeploy_no_rtx_a", "muxdeploy_no_rtx_b"))
    assert engine_mismatch({**FACTS, "format": "tensorrt-rtx"}, gpu=orin) == "muxdeploy_no_rtx_a is not installed here"


def test_precision_preference_and_ort_optimized_artifacts(tiny_bundle: Path) -> None:
    data = json.loads((tiny_bundle / "muxdeploy.json").read_text())
    sha = sha256_file(tiny_bundle / "model.onnx")
    data["artifacts"].update(
        {
            "model.fp16.onnx": {"format": "onnx", "precision": "fp16", "sha256": sha},
            "model.int8.onnx": {"format": "onnx", "precision": "int8", "sha256": sha},
            "model.ort.onnx": {"format": "onnx", "precision": "fp32", "sha256": sha, "role": "ort-optimized"},
        }
    )
    manifest = Manifest(data, tiny_bundle)
    assert select(manifest, "onnxruntime-cpu").artifact == "model.ort.onnx"
    assert select(manifest, "onnxruntime-cuda").artifact == "model.fp16.onnx"
    assert select(manifest, "onnxruntime-cpu", "int8").artifact == "model.int8.onnx"


def test_ort_optimized_artifact_runs_at_its_recorded_graph_level(bundle_copy: Path) -> None:
    import shutil

    shutil.copy(bundle_copy / "model.onnx", bundle_copy / "model.ort.onnx")
    manifest = Manifest.load(bundle_copy)
    manifest.add_artifact(
        "model.ort.onnx", "onnx", "fp32", role="ort-optimized", session_graph_optimization_level="extended"
    )
    manifest.save()
    data = [[5, 6, 7], [8, 9]]
    with MuxRuntime(bundle_copy) as rt:
        assert rt.backend_name == "onnxruntime-cpu fp32 (model.ort.onnx)"
        assert rt._backend.graph_optimization == "extended"
        got = [r["logits"] for r in rt.predict(data)]
    with MuxRuntime(bundle_copy, backend=lambda: _plain(bundle_copy)) as rt:
        want = [r["logits"] for r in rt.predict(data)]
    np.testing.assert_allclose(got, want, atol=1e-5)


def _plain(bundle: Path) -> Backend:
    """An onnxruntime backend over the plain model.onnx (default graph level)."""
    return create(Selection("onnxruntime-cpu", "model.onnx", "fp32"), Manifest.load(bundle), 8)


def test_tensorrt_for_rtx_plans_need_their_module(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from muxdeploy.runtimes.backends import engine_facts

    monkeypatch.setitem(engine_facts.TRT_FLAVORS, "tensorrt-rtx", ("muxdeploy_no_rtx", "muxdeploy_no_rtx_bindings"))
    (bundle_copy / "engine.fp16.rtx.plan").write_bytes(os.urandom(128))
    manifest = Manifest.load(bundle_copy)
    manifest.add_artifact("engine.fp16.rtx.plan", "tensorrt-rtx", "fp16", tensorrt_module="tensorrt_rtx")
    manifest.save()
    with pytest.raises(MissingDependency, match="needs the muxdeploy_no_rtx Python module"):
        select(Manifest.load(bundle_copy), "tensorrt")
