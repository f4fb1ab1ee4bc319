"""Train and evaluate vision DataMUX models on MNIST (the paper's notebook recipe, on the 5,000 registry digits).

Training draws fresh random N-image groups every epoch. Loss "mse" is the notebook's target (tanh outputs
regressed onto +1 for the true digit and -1 elsewhere); "ce" (default) is cross-entropy on the tanh outputs
scaled by CE_SCALE, which leaves the argmax unchanged and trains far faster on 4,000 digits.
Evaluation packs test images in order with the runtime's packer (zero-image fillers in the last group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.models.vision import VisionConfig, VisionDataMux, build_vision_model, preprocess_mnist
from muxdeploy.runtimes.packing import iter_batches, pack_groups, unpack_groups

MNIST_LABELS = [str(d) for d in range(10)]
CE_SCALE = 5.0
LOSSES = ("ce", "mse")


@dataclass
class MnistSplit:
    """Preprocessed MNIST images float32 [M, 1, 20, 20] and labels int64 [M] for training and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def split_mnist(images: np.ndarray, labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> MnistSplit:
    """Shuffle (the registry file is sorted by class), preprocess to 20x20 crops, and split train/test."""
    order = np.random.default_rng(seed).permutation(len(labels))
    x, y = preprocess_mnist(images[order]), np.asarray(labels)[order].astype(np.int64)
    n_test = round(len(y) * test_fraction)
    return MnistSplit(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def load_mnist_split(test_fraction: float = 0.2, seed: int = 0) -> MnistSplit:
    """The 5,000 registry MNIST digits (muxdeploy.training.datasets.load_mnist), shuffled and split."""
    from muxdeploy.training.datasets import load_mnist

    images, labels = load_mnist()
    return split_mnist(images, labels, test_fraction, seed)


def _targets(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """+1 for the true class, -1 elsewhere (the notebook's regression target)."""
    return torch.nn.functional.one_hot(labels, num_labels).float() * 2 - 1


def train_vision(
    config: VisionConfig,
    train_x: np.ndarray,
    train_y: np.ndarray,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    loss: str = "ce",
    progress: Callable[[int, float], None] | None = None,
) -> VisionDataMux:
    """Train a new model; `progress(epoch, mean_loss)` is called after each epoch. Returns it in eval mode."""
    if loss not in LOSSES:
        raise UserInputError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_vision_model(config)
    model.init_weights(seed)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = config.num_instances
    x_all, y_all = torch.from_numpy(train_x), torch.from_numpy(train_y)
    usable = (len(train_y) // n) * n
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(train_y))[:usable])
        groups_x = x_all[order].reshape(-1, n, *train_x.shape[1:])
        groups_y = y_all[order].reshape(-1, n)
        losses = []
        for start in range(0, groups_x.shape[0], batch_size):
            xb, yb = groups_x[start : start + batch_size], groups_y[start : start + batch_size]
            out = model(xb)
            if loss == "mse":
                value = 0.5 * ((out - _targets(yb, config.num_labels)) ** 2).mean() * n
            else:
                value = torch.nn.functional.cross_entropy(CE_SCALE * out.reshape(-1, config.num_labels), yb.reshape(-1))
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
        if progress is not None:
            progress(epoch, float(np.mean(losses)))
    return model.eval()


def predict_vision(model: VisionDataMux, images: np.ndarray, max_batch: int = 256) -> np.ndarray:
    """Scores [M, C] for images [M, C_in, H, W], packed in order into N-slot groups exactly as the runtime packs."""
    n = model.config.num_instances
    filler = np.zeros(images.shape[1:], dtype=np.float32)
    groups = pack_groups(np.asarray(images, dtype=np.float32), n, filler)
    outs = []
    with torch.no_grad():
        for batch in iter_batches(groups, max_batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(batch))).numpy())
    return unpack_groups(np.concatenate(outs), len(images))


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


def train_mnist_checkpoint(
    out: str,
    num_instances: int,
    epochs: int = 40,
    arch: str = "cnn",
    transform: str = "nonlinear_expand",
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """What `muxdeploy train --task mnist` runs: train on the registry digits, write ckpt.pt, return test accuracy."""
    from muxdeploy.checkpoint import save_checkpoint

    if transform == "nonlinear_expand" and arch == "mlp":
        transform = "random_ortho"
    split = load_mnist_split(seed=seed)
    config = VisionConfig(num_instances=num_instances, arch=arch, transform=transform)
    model = train_vision(
        config, split.train_x, split.train_y, epochs=epochs, batch_size=16, lr=1e-3, seed=seed, progress=progress
    )
    acc = accuracy(predict_vision(model, split.test_x), split.test_y)
    save_checkpoint(out, model, labels=MNIST_LABELS, meta={"task": "mnist", "test_accuracy": acc, "epochs": epochs})
    return acc
