"""The small trainer: retrieval reaches ~100% (the runtime's packing oracle), sentiment trains and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muxdeploy import training
from runtimes.errors import UserInputError
from runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups


@pytest.fixture(scope="module")
def retrieval_model() -> torch.nn.Module:
    return training.train_tiny_retrieval(num_instances=4, seq_len=8, seed=0)


def test_tiny_retrieval_reaches_99_percent(retrieval_model: torch.nn.Module) -> None:
    assert training.retrieval_accuracy(retrieval_model, num_groups=256, seed=7) >= 0.99


def test_tiny_retrieval_returns_each_instance_through_the_packer(retrieval_model: torch.nn.Module) -> None:
    config = retrieval_model.config
    low, high = training.retrieval_token_range(config)
    rng = np.random.default_rng(3)
    instances = training.random_token_instances(rng, 11, config.seq_len, low, high)  # 11: last group has fillers
    encoded = encode_token_instances(instances, config.seq_len, config.pad_token_id, config.vocab_size)
    groups = pack_groups(encoded.ids, config.num_instances, default_filler(config.seq_len, config.pad_token_id))
    with torch.no_grad():
        pred = retrieval_model(torch.from_numpy(groups)).argmax(-1).numpy()
    rows = unpack_groups(pred, len(instances))
    exact = sum(np.array_equal(rows[i, : len(inst)], inst) for i, inst in enumerate(instances))
    assert exact >= 10  # each instance gets its own tokens back, in order


def test_untrained_retrieval_model_is_not_an_oracle() -> None:
    model = training.new_model(training.tiny_retrieval_config(4, 8), seed=0).eval()
    assert training.retrieval_accuracy(model, num_groups=32) < 0.2


def test_retrieval_groups_are_padded_by_the_packer() -> None:
    config = training.tiny_retrieval_config(4, 8)
    groups = training.random_retrieval_groups(config, np.random.default_rng(0), 16)
    assert groups.shape == (16, 4, 8) and groups.dtype == np.int32
    low, _ = training.retrieval_token_range(config)
    assert low == 3 + 4  # above pad 0, prefix filler 1, CLS 2, slots 3..6
    content = groups[groups != 0]
    assert content.min() >= low and content.max() < config.vocab_size
    # padding is a suffix of each row, as encode_token_instances writes it
    is_pad = groups == 0
    assert not (is_pad[..., :-1] & ~is_pad[..., 1:]).any()


def test_train_retrieval_refuses_a_classification_config() -> None:
    from muxdeploy.models.presets import preset_config

    with pytest.raises(UserInputError, match="retrieval config"):
        training.train_retrieval(preset_config("tiny", 4), steps=1, batch_groups=1, lr=1e-3, seed=0)


def test_exported_retrieval_bundle_returns_each_instance(retrieval_model: torch.nn.Module, tmp_path) -> None:
    import onnxruntime as ort

    from exporters.onnx import export_bundle
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "ckpt.pt", retrieval_model)
    result = export_bundle(load_checkpoint(tmp_path / "ckpt.pt").export_spec(), 4, tmp_path / "bundle", max_batch=4)
    config = retrieval_model.config
    low, high = training.retrieval_token_range(config)
    instances = training.random_token_instances(np.random.default_rng(5), 14, config.seq_len, low, high)
    encoded = encode_token_instances(instances, config.seq_len, config.pad_token_id, config.vocab_size)
    groups = pack_groups(encoded.ids, 4, np.asarray(result.manifest.data["filler"], dtype=np.int32))
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    rows = unpack_groups(session.run(None, {"input_ids": groups})[0].argmax(-1), len(instances))
    exact = sum(np.array_equal(rows[i, : len(inst)], inst) for i, inst in enumerate(instances))
    assert exact >= 13
