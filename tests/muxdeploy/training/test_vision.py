"""Vision DataMUX training: synthetic digits are learned at N=2, and the MNIST recipe writes a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from muxdeploy.checkpoint import load_checkpoint
from muxdeploy.models.vision import VisionConfig
from muxdeploy.training import datasets
from muxdeploy.training.vision import accuracy, predict_vision, split_mnist, train_mnist_checkpoint, train_vision


def test_train_vision_learns_synthetic_digits() -> None:
    """Three epochs on 600 synthetic 'digits' (class = which quadrant is bright) reach well above chance at N=2."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=600)
    images = rng.integers(0, 40, size=(600, 28, 28)).astype(np.uint8)
    for i, lab in enumerate(labels):
        r, c = divmod(int(lab), 2)
        images[i, 4 + 10 * r : 14 + 10 * r, 4 + 10 * c : 14 + 10 * c] = 255
    split = split_mnist(images, labels, test_fraction=0.2)
    torch.set_num_threads(1)
    model = train_vision(VisionConfig(num_instances=2), split.train_x, split.train_y, epochs=6, lr=3e-3)
    acc = accuracy(predict_vision(model, split.test_x), split.test_y)
    assert acc > 0.6, acc


def test_train_mnist_checkpoint_on_real_digits(tmp_path: Path) -> None:
    """One epoch at N=2 on the 4,000 registry training digits already beats chance by far; the ckpt exports."""
    import os

    try:
        datasets.load_mnist()
    except datasets.FetchError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"registry unreachable under CI: {exc}")
        pytest.skip(f"registry unreachable: {exc}")
    torch.set_num_threads(1)
    acc = train_mnist_checkpoint(str(tmp_path / "mnist.pt"), num_instances=2, epochs=1)
    assert acc > 0.5, acc
    ckpt = load_checkpoint(tmp_path / "mnist.pt")
    assert ckpt.kind == "vision" and ckpt.meta["test_accuracy"] == acc and ckpt.labels == [str(d) for d in range(10)]
