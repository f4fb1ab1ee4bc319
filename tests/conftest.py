"""Shared fixtures: tiny models and bundles built in milliseconds to seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from muxdeploy.models import MuxConfig, build_model

# Tiny models run fastest on one thread, and CI has two shared cores.
torch.set_num_threads(1)


def tiny_config(**overrides: Any) -> MuxConfig:
    """A 2-layer width-32 DataMUX config over a 1000-token vocabulary (pad 0), N=4, L=16."""
    n = overrides.get("num_instances", 4)
    values: dict[str, Any] = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "num_instances": n,
        "seq_len": 16,
        "num_labels": 3,
        "mux_prefix_filler_id": 1,
        "mux_cls_id": 2,
        "mux_slot_ids": [3 + i for i in range(n)],
    }
    values.update(overrides)
    return MuxConfig(**values)


def tiny_model(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A randomly initialized eval-mode tiny model."""
    model = build_model(tiny_config(**overrides))
    model.init_weights(seed)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ckpt.pt of a random tiny sequence-classification model (N=4, L=16)."""
    from muxdeploy.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    save_checkpoint(path, tiny_model(), labels=["neg", "neutral", "pos"])
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported bundle of `tiny_ckpt` (read-only: copy it before changing anything)."""
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "mux_model"
    export_bundle(load_checkpoint(tiny_ckpt).export_spec(), 4, out, max_batch=8)
    return out


@pytest.fixture(scope="session")
def groupmate_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle (N=4, L=16, 3 labels) of a tiny random model whose 2-D weights are scaled up 8x, so that its
    group-mates visibly move its logits and flip some answers (the isolation and group-mate tests need that)."""
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    model = tiny_model(seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.mul_(8)
    work = tmp_path_factory.mktemp("groupmates")
    save_checkpoint(work / "ckpt.pt", model, labels=["neg", "neutral", "pos"])
    export_bundle(load_checkpoint(work / "ckpt.pt").export_spec(), 4, work / "mux_model", max_batch=8)
    return work / "mux_model"


@pytest.fixture(scope="session")
def retrieval_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ckpt.pt of a tiny retrieval model (N=4, L=8, vocab 64) trained to ~100%: the packing oracle (~10 s, once)."""
    from muxdeploy.checkpoint import save_checkpoint
    from muxdeploy.training import retrieval

    path = tmp_path_factory.mktemp("retrieval") / "ckpt.pt"
    save_checkpoint(path, retrieval.train_tiny_retrieval(num_instances=4, seq_len=8, seed=0))
    return path


@pytest.fixture(scope="session")
def retrieval_bundle(retrieval_ckpt: Path) -> Path:
    """The oracle model's bundle (max batch 8 groups) with the instance-batched ONNX beside the grouped one."""
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    out = retrieval_ckpt.parent / "mux_model"
    export_bundle(load_checkpoint(retrieval_ckpt).export_spec(), 4, out, max_batch=8, instance_batch=True)
    return out


def has_cuda() -> bool:
    """True when a CUDA GPU is usable from torch."""
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests where there is no GPU."""
    if has_cuda() or os.environ.get("MUXDEPLOY_FORCE_GPU_TESTS"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
