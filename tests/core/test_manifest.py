"""The bundle layout: artifact file names (the contract, spelled out) and the one artifact query."""

from __future__ import annotations

import pytest

from muxdeploy.core.manifest import (
    ENGINE_FORMATS,
    GROUPED,
    INSTANCES,
    MANIFEST_NAME,
    PRECISIONS,
    REFERENCE_ONNX,
    ROLE_ORT,
    ROLE_REFERENCE,
    ROLE_TYPED,
    TOKENIZER_NAME,
    Manifest,
    engine_name,
    instance_onnx_name,
    onnx_name,
    ort_onnx_name,
)


def test_artifact_file_names() -> None:
    assert PRECISIONS == ("fp32", "fp16", "int8", "fp8")
    assert (MANIFEST_NAME, TOKENIZER_NAME, REFERENCE_ONNX) == ("muxdeploy.json", "tokenizer.json", "model.onnx")
    assert [onnx_name(p) for p in PRECISIONS] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.fp8.onnx"]
    assert [ort_onnx_name(p) for p in PRECISIONS[:3]] == [
        "model.ort.onnx",
        "model.fp16.ort.onnx",
        "model.int8.ort.onnx",
    ]
    assert [instance_onnx_name(p) for p in PRECISIONS[:3]] == [
        "model.instance_batch.onnx",
        "model.instance_batch.fp16.onnx",
        "model.instance_batch.int8.onnx",
    ]
    assert [engine_name(p) for p in PRECISIONS] == [
        "engine.fp32.plan",
        "engine.fp16.plan",
        "engine.int8.plan",
        "engine.fp8.plan",
    ]
    assert engine_name("int8", "tensorrt-rtx") == "engine.int8.rtx.plan"
    assert engine_name("fp16", signature=INSTANCES) == "engine.instances.fp16.plan"
    assert engine_name("fp32", "tensorrt-rtx", INSTANCES) == "engine.instances.fp32.rtx.plan"
    for make in (onnx_name, ort_onnx_name, instance_onnx_name, engine_name):
        with pytest.raises(ValueError, match="unknown precision 'bf16'"):
            make("bf16")


ARTIFACTS = {
    "model.onnx": {"format": "onnx", "precision": "fp32", "role": "reference"},
    "model.fp16.onnx": {"format": "onnx", "precision": "fp16", "role": "typed"},
    "model.fp16.ort.onnx": {"format": "onnx", "precision": "fp16", "role": "ort-optimized"},
    "old.fp16.onnx": {"format": "onnx", "precision": "fp16"},
    "model.instance_batch.onnx": {"format": "onnx", "precision": "fp32", "signature": "instances"},
    "engine.fp16.plan": {"format": "tensorrt", "precision": "fp16"},
    "engine.int8.rtx.plan": {"format": "tensorrt-rtx", "precision": "int8"},
    "engine.instances.fp16.plan": {"format": "tensorrt", "precision": "fp16", "signature": "instances"},
}


def test_artifacts_where_matches_every_given_field() -> None:
    m = Manifest({"artifacts": ARTIFACTS})
    assert m.artifacts_where() == list(ARTIFACTS)
    assert m.artifacts_where(format="onnx", precision="fp16") == [
        "model.fp16.onnx",
        "model.fp16.ort.onnx",
        "old.fp16.onnx",
    ]
    assert m.artifacts_where(role=ROLE_ORT) == ["model.fp16.ort.onnx"]
    # a tuple accepts any of its values; None in a role tuple accepts artifacts that record no role
    grouped_sources = m.artifacts_where(format="onnx", precision="fp16", role=(ROLE_REFERENCE, ROLE_TYPED, None))
    assert grouped_sources == ["model.fp16.onnx", "old.fp16.onnx"]
    assert m.artifacts_where(precision=("fp32", "int8"), signature=GROUPED) == ["model.onnx", "engine.int8.rtx.plan"]
    # no "signature" key means grouped [B, N, ...]
    assert m.artifacts_where(format=ENGINE_FORMATS, signature=GROUPED) == ["engine.fp16.plan", "engine.int8.rtx.plan"]
    assert m.artifacts_where(format=ENGINE_FORMATS, signature=INSTANCES) == ["engine.instances.fp16.plan"]
    assert m.artifacts_where(signature=INSTANCES, format="onnx") == ["model.instance_batch.onnx"]
    assert m.artifacts_where(format="onnx", precision="int8") == []
    assert Manifest({}).artifacts_where(format="onnx") == []
