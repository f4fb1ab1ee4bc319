"""Sequence classification on token ids: packing-exact predictions, toy tasks learned at N=1 and N=4, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.training import classifier
from muxdeploy.training.loop import new_model


def test_predictions_do_not_depend_on_fillers_in_the_last_group() -> None:
    from muxdeploy.models.presets import preset_config

    model = new_model(preset_config("tiny", 4, seq_len=8, vocab_size=200), seed=1).eval()
    rng = np.random.default_rng(0)
    ids = [rng.integers(10, 200, size=k) for k in (3, 8, 5, 2, 7, 4, 6, 1)]
    full = classifier.predict_classifier(model, ids)
    first_five = classifier.predict_classifier(model, ids[:5])  # second group: 1 instance + 3 fillers
    np.testing.assert_allclose(first_five[:4], full[:4], atol=1e-6)  # same first group
    assert first_five.shape == (5, 2)
    labels = full.argmax(-1)
    assert classifier.evaluate_classifier(model, ids, labels) == 1.0
    with pytest.raises(UserInputError, match="N=4"):
        classifier.evaluate_classifier(model, ids, labels, num_instances=2)


def test_classifier_training_learns_a_learnable_toy_task() -> None:
    from muxdeploy.models.presets import preset_config

    config = preset_config(
        "tiny", 1, seq_len=6, vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=256)
    ids = [np.concatenate([[20 + 20 * y], rng.integers(10, 64, size=4)]) for y in labels]  # first token = label
    result = classifier.train_classifier(config, ids, labels, epochs=12, batch_groups=16, lr=3e-3, progress=False)
    assert classifier.evaluate_classifier(result.model, ids, labels) >= 0.95


def test_train_classifier_rejects_bad_input() -> None:
    from muxdeploy.models.presets import preset_config

    config = preset_config("tiny", 2, seq_len=8, vocab_size=64)
    with pytest.raises(UserInputError, match="labels"):
        classifier.train_classifier(config, [[5, 6]], [0, 1], progress=False)
    with pytest.raises(UserInputError, match="labels must be in"):
        classifier.train_classifier(config, [[5, 6]], [3], progress=False)
    with pytest.raises(UserInputError, match="outside the vocabulary"):
        classifier.train_classifier(config, [[5, 600]], [1], progress=False)


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
    result = classifier.train_classifier(config, ids, labels, epochs=40, batch_groups=16, lr=3e-3, progress=False)
    assert classifier.evaluate_classifier(result.model, ids, labels) >= 0.9  # each slot gets its own instance's label


def test_training_device_auto_is_the_cpu_without_a_gpu_and_cuda_without_one_is_refused():
    import torch

    assert classifier.training_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert classifier.training_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="sees no CUDA GPU"):
            classifier.training_device("cuda")
    with pytest.raises(UserInputError, match="unknown device 'tpu9'"):
        classifier.training_device("tpu9")


def _toy(n: int, size: int, seed: int = 0):
    from muxdeploy.models.presets import preset_config

    config = preset_config(
        "tiny", n, seq_len=6, vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=size)
    ids = [np.concatenate([[20 + 20 * y], rng.integers(10, 64, size=4)]) for y in labels]  # first token = label
    return config, ids, labels


def test_training_keeps_the_best_dev_weights_stops_on_patience_and_measures_the_warm_up() -> None:
    config, ids, labels = _toy(1, 256)
    dev = (ids[:64], labels[:64])
    result = classifier.train_classifier(
        config,
        ids,
        labels,
        steps=400,
        batch_groups=16,
        lr=3e-3,
        retrieval_loss_coeff=0.1,
        retrieval_warmup_epochs=2,
        dev=dev,
        patience_steps=48,
        progress=False,
    )
    assert result.stopped_early and result.steps < 400  # the toy task is learned fast, then nothing improves
    assert result.best_dev_accuracy == max(h["dev_accuracy"] for h in result.history if h["step"] > 32)
    assert classifier.evaluate_classifier(result.model, *dev) == result.best_dev_accuracy  # the best weights
    assert 0.0 <= result.retrieval_token_accuracy <= 1.0 and result.device == "cpu"


@pytest.mark.gpu
def test_training_runs_on_cuda_and_hands_back_a_cpu_model() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    config, ids, labels = _toy(1, 256)
    result = classifier.train_classifier(
        config,
        ids,
        labels,
        epochs=12,
        batch_groups=16,
        lr=3e-3,
        device="auto",
        progress=False,
        retrieval_loss_coeff=0.1,
        retrieval_warmup_epochs=1,
        dev=(ids[:64], labels[:64]),
    )
    assert result.device.startswith("cuda") and next(result.model.parameters()).device.type == "cpu"
    assert result.retrieval_token_accuracy is not None
    assert classifier.evaluate_classifier(result.model, ids, labels) >= 0.9
