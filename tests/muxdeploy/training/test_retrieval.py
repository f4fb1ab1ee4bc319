"""Retrieval: the tiny model reaches ~100% (the runtime's packing oracle), and its bundle returns each instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups
from muxdeploy.training import retrieval
from muxdeploy.training.loop import new_model


@pytest.fixture(scope="module")
def retrieval_model(retrieval_ckpt: Path) -> torch.nn.Module:
    """The session's trained oracle model (tests/conftest.py), loaded back."""
    from muxdeploy.checkpoint import load_checkpoint

    return load_checkpoint(retrieval_ckpt).model.eval()


def test_tiny_retrieval_reaches_99_percent(retrieval_model: torch.nn.Module) -> None:
    assert retrieval.retrieval_accuracy(retrieval_model, num_groups=256, seed=7) >= 0.99


def test_tiny_retrieval_returns_each_instance_through_the_packer(retrieval_model: torch.nn.Module) -> None:
    config = retrieval_model.config
    low, high = retrieval.retrieval_token_range(config)
    rng = np.random.default_rng(3)
    instances = retrieval.random_token_instances(rng, 11, config.seq_len, low, high)  # 11: last group has fillers
    encoded = encode_token_instances(instances, config.seq_len, config.pad_token_id, config.vocab_size)
    groups = pack_groups(encoded.ids, config.num_instances, default_filler(config.seq_len, config.pad_token_id))
    with torch.no_grad():
        pred = retrieval_model(torch.from_numpy(groups)).argmax(-1).numpy()
    rows = unpack_groups(pred, len(instances))
    exact = sum(np.array_equal(rows[i, : len(inst)], inst) for i, inst in enumerate(instances))
    assert exact >= 10  # each instance gets its own tokens back, in order


def test_untrained_retrieval_model_is_not_an_oracle() -> None:
    model = new_model(retrieval.tiny_retrieval_config(4, 8), seed=0).eval()
    assert retrieval.retrieval_accuracy(model, num_groups=32) < 0.2


def test_retrieval_groups_are_padded_by_the_packer() -> None:
    config = retrieval.tiny_retrieval_config(4, 8)
    groups = retrieval.random_retrieval_groups(config, np.random.default_rng(0), 16)
    assert groups.shape == (16, 4, 8) and groups.dtype == np.int32
    low, _ = retrieval.retrieval_token_range(config)
    assert low == 3 + 4  # above pad 0, prefix filler 1, CLS 2, slots 3..6
    content = groups[groups != 0]
    assert content.min() >= low and content.max() < config.vocab_size
    # padding is a suffix of each row, as encode_token_instances writes it
    is_pad = groups == 0
    assert not (is_pad[..., :-1] & ~is_pad[..., 1:]).any()


def test_train_retrieval_refuses_a_classification_config() -> None:
    from muxdeploy.models.presets import preset_config

    with pytest.raises(UserInputError, match="retrieval config"):
        retrieval.train_retrieval(preset_config("tiny", 4), steps=1, batch_groups=1, lr=1e-3, seed=0)


def test_exported_retrieval_bundle_returns_each_instance(retrieval_model: torch.nn.Module, tmp_path) -> None:
    import onnxruntime as ort

    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    save_checkpoint(tmp_path / "ckpt.pt", retrieval_model)
    result = export_bundle(load_checkpoint(tmp_path / "ckpt.pt").export_spec(), 4, tmp_path / "bundle", max_batch=4)
    config = retrieval_model.config
    low, high = retrieval.retrieval_token_range(config)
    instances = retrieval.random_token_instances(np.random.default_rng(5), 14, config.seq_len, low, high)
    encoded = encode_token_instances(instances, config.seq_len, config.pad_token_id, config.vocab_size)
    groups = pack_groups(encoded.ids, 4, np.asarray(result.manifest.data["filler"], dtype=np.int32))
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    rows = unpack_groups(session.run(None, {"input_ids": groups})[0].argmax(-1), len(instances))
    exact = sum(np.array_equal(rows[i, : len(inst)], inst) for i, inst in enumerate(instances))
    assert exact >= 13


def test_retrieval_recipe_is_the_tiny_oracle_unless_preset_or_mixing_change() -> None:
    tiny = retrieval.retrieval_recipe("tiny", 4, 8)
    assert tiny.config == retrieval.tiny_retrieval_config(4, 8)
    assert (tiny.steps, tiny.batch_groups, tiny.lr) == (retrieval.tiny_retrieval_steps(4, 8), 64, 5e-3)
    other = retrieval.retrieval_recipe("small", 2, 6, steps=7, demuxing="mlp", lr=1e-3)
    assert other.config.hidden_size == 256 and other.config.demuxing_variant == "mlp"
    assert other.config.vocab_size == retrieval.TINY_RETRIEVAL_VOCAB and other.config.task == "retrieval"
    assert other.config.hidden_dropout_prob == 0.0 and other.config.seq_len == 6
    assert (other.steps, other.lr) == (7, 1e-3)
