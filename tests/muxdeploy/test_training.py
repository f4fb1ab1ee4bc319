"""The small trainer: retrieval reaches ~100% (the runtime's packing oracle), sentiment trains and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups

from muxdeploy import training
from muxdeploy.core.errors import UserInputError


@pytest.fixture(scope="module")
def retrieval_model(retrieval_ckpt: Path) -> torch.nn.Module:
    """The session's trained oracle model (tests/conftest.py), loaded back."""
    from muxdeploy.checkpoint import load_checkpoint

    return load_checkpoint(retrieval_ckpt).model.eval()


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
    from muxdeploy.exporters.onnx import export_bundle

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


def test_sentiment_subset_trains_and_its_checkpoint_exports_with_parity(tmp_path) -> None:
    from muxdeploy.exporters.onnx import export_bundle

    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.datasets import FetchError

    try:
        run = training.train_sentiment("tiny", num_instances=2, seq_len=16, steps=3, limit=40, progress=False)
    except FetchError as exc:
        pytest.skip(f"registry unreachable: {exc}")
    assert run.result.steps == 3 and run.train_size == 40 and len(run.dev_labels) == 10
    assert 0.0 <= run.dev_accuracy <= 1.0
    labels = training.SENTIMENT_LABELS
    save_checkpoint(tmp_path / "ckpt.pt", run.model, tokenizer_json=run.tokenizer_json, labels=labels)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")  # torch.load(weights_only=True) inside
    assert ckpt.config.seq_len == 16 and ckpt.labels == ["negative", "positive"]
    result = export_bundle(ckpt.export_spec(), 2, tmp_path / "bundle", max_batch=4)
    assert result.max_abs_diff <= 1e-4
    assert (tmp_path / "bundle" / "tokenizer.json").is_file()


def test_predictions_do_not_depend_on_fillers_in_the_last_group() -> None:
    from muxdeploy.models.presets import preset_config

    model = training.new_model(preset_config("tiny", 4, seq_len=8, vocab_size=200), seed=1).eval()
    rng = np.random.default_rng(0)
    ids = [rng.integers(10, 200, size=k) for k in (3, 8, 5, 2, 7, 4, 6, 1)]
    full = training.predict_classifier(model, ids)
    first_five = training.predict_classifier(model, ids[:5])  # second group: 1 instance + 3 fillers
    np.testing.assert_allclose(first_five[:4], full[:4], atol=1e-6)  # same first group
    assert first_five.shape == (5, 2)
    labels = full.argmax(-1)
    assert training.evaluate_classifier(model, ids, labels) == 1.0
    with pytest.raises(UserInputError, match="N=4"):
        training.evaluate_classifier(model, ids, labels, num_instances=2)


def test_classifier_training_learns_a_learnable_toy_task() -> None:
    from muxdeploy.models.presets import preset_config

    config = preset_config(
        "tiny", 1, seq_len=6, vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=256)
    ids = [np.concatenate([[20 + 20 * y], rng.integers(10, 64, size=4)]) for y in labels]  # first token = label
    result = training.train_classifier(config, ids, labels, epochs=12, batch_groups=16, lr=3e-3, progress=False)
    assert training.evaluate_classifier(result.model, ids, labels) >= 0.95


def test_train_classifier_rejects_bad_input() -> None:
    from muxdeploy.models.presets import preset_config

    config = preset_config("tiny", 2, seq_len=8, vocab_size=64)
    with pytest.raises(UserInputError, match="labels"):
        training.train_classifier(config, [[5, 6]], [0, 1], progress=False)
    with pytest.raises(UserInputError, match="labels must be in"):
        training.train_classifier(config, [[5, 6]], [3], progress=False)
    with pytest.raises(UserInputError, match="outside the vocabulary"):
        training.train_classifier(config, [[5, 600]], [1], progress=False)


def test_muxed_classifier_learns_a_toy_task_at_n4() -> None:
    from muxdeploy.models.presets import preset_config

    config = preset_config(
        "tiny",
        4,
        seq_len=6,
        vocab_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        demuxing_variant="mlp",
        muxing_variant="binary_hadamard",
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=512)
    ids = [np.concatenate([[37], [20 + 20 * y], rng.integers(10, 64, size=4)]) for y in labels]  # 2nd token = label
    result = training.train_classifier(config, ids, labels, epochs=40, batch_groups=16, lr=3e-3, progress=False)
    assert training.evaluate_classifier(result.model, ids, labels) >= 0.9  # each slot gets its own instance's label
