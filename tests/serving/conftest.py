"""Serving fixtures: a trained tiny retrieval bundle, the oracle for packing (each answer is its own tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def retrieval_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle (with the instance-batched ONNX) of a tiny retrieval model trained to ~100%: N=4, L=8, vocab 64."""
    from exporters.onnx import export_bundle
    from muxdeploy import training
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("retrieval")
    save_checkpoint(root / "ckpt.pt", training.train_tiny_retrieval(seed=0))
    out = root / "mux_model"
    export_bundle(load_checkpoint(root / "ckpt.pt").export_spec(), 4, out, max_batch=8, instance_batch=True)
    return out
