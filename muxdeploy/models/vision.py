"""Vision DataMUX (the paper's MNIST experiments): N images through one CNN (or MLP) pass, N outputs out.

Each of the N images gets its own per-instance transform (a fixed random 3x3 convolution, or a
learned nonlinear convolution stack expanding to `expand_channels` channels; for the MLP a fixed
random orthogonal matrix on the flattened image); the transformed images are combined (summed, as
the paper's notebook does, or averaged); one shared backbone (LeNet-style CNN or an MLP) runs on the
mixture; N separate `Linear(84, 84)` + tanh demux heads and one shared output layer (+ tanh, the
notebook trains against +-1 targets) give `[B, N, num_labels]`.

Inputs are `[B, N, 1, H, W]` float32 images scaled to [0, 1]; `preprocess_mnist` turns 28x28 uint8
digits into the notebook's 20x20 center crops.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.core.errors import UserInputError

ARCHS = ("cnn", "mlp")
TRANSFORMS = {"cnn": ("gaussian_conv", "nonlinear_expand"), "mlp": ("random_ortho",)}
COMBINES = ("sum", "mean")
FEATURE_DIM = 84  # LeNet's F6 width: the demux heads work on it
MNIST_CROP = 4  # the notebook crops 28x28 digits to their central 20x20


@dataclass
class VisionConfig:
    """Everything that fixes a vision DataMUX model's forward pass."""

    num_instances: int = 1
    arch: str = "cnn"
    transform: str = "nonlinear_expand"
    combine: str = "sum"
    image_size: int = 20
    in_channels: int = 1
    num_labels: int = 10
    expand_channels: int = 8
    hidden_channels: int = 16  # inner width of the nonlinear transform
    mlp_hidden: int = 256
    task: str = "image_classification"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UserInputError naming the first field that makes no sense."""
        if self.arch not in ARCHS:
            raise UserInputError(f"unknown vision arch {self.arch!r}; use one of {', '.join(ARCHS)}")
        if self.transform not in TRANSFORMS[self.arch]:
            raise UserInputError(
                f"transform {self.transform!r} does not apply to arch {self.arch!r}; use one of "
                f"{', '.join(TRANSFORMS[self.arch])}"
            )
        if self.combine not in COMBINES:
            raise UserInputError(f"unknown combine {self.combine!r}; use one of {', '.join(COMBINES)}")
        if self.num_instances < 1:
            raise UserInputError(f"num_instances must be >= 1, got {self.num_instances}")
        if self.arch == "cnn" and self.image_size != 20:
            raise UserInputError(f"the LeNet backbone needs 20x20 images, got image_size {self.image_size}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one instance: (C, H, W)."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def output_dim(self) -> int:
        return self.num_labels

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what checkpoints and manifests store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionConfig:
        """Build from a dict, keeping unknown keys under `extra`."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)


class InstanceTransform(nn.Module):
    """Per-instance transforms applied with one grouped convolution (or one batched matmul), then combined.

    Parameters keep the notebook's per-instance layout ([N, C_out, C_in, 3, 3] / [N, D, D]) and are
    always stored in the state dict, so an exported model's transform comes from the checkpoint.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        n, c = config.num_instances, config.in_channels
        if config.transform == "gaussian_conv":
            # fixed: a buffer, never trained
            self.register_buffer("weight", torch.zeros(n, c, c, 3, 3))
        elif config.transform == "nonlinear_expand":
            h, e = config.hidden_channels, config.expand_channels
            self.weight = nn.Parameter(torch.zeros(n, h, c, 3, 3))
            self.weight2 = nn.Parameter(torch.zeros(n, e, h, 3, 3))
        else:
            d = c * config.image_size**2
            self.register_buffer("weight", torch.zeros(n, d, d))

    @property
    def out_channels(self) -> int:
        return self.config.expand_channels if self.config.transform == "nonlinear_expand" else self.config.in_channels

    def init(self, gen: torch.Generator) -> None:
        """Draw the transform of a NEW model (standard normal, as the notebook; orthogonal for the MLP)."""
        with torch.no_grad():
            if self.config.transform == "random_ortho":
                mats = []
                for _ in range(self.config.num_instances):
                    q, r = torch.linalg.qr(torch.randn(self.weight.shape[1:], generator=gen, dtype=torch.float64))
                    mats.append((q * torch.sign(torch.diagonal(r))).float())
                self.weight.copy_(torch.stack(mats))
                return
            self.weight.normal_(generator=gen)
            if self.config.transform == "nonlinear_expand":
                # learned: scaled by 1/sqrt(fan_in) so tanh does not saturate at the start (the notebook's
                # unscaled randn trains only with its 60k-image, 15-epoch budget)
                self.weight.div_(3.0)
                self.weight2.normal_(generator=gen).div_(self.weight2[0, 0].numel() ** 0.5)

    def _grouped_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [B, N*Cin, H, W], weight [N, Cout, Cin, 3, 3] -> [B, N*Cout, H, W], instance i by weight[i]."""
        n, cout, cin = weight.shape[:3]
        return F.conv2d(x, weight.reshape(n * cout, cin, 3, 3), padding=1, groups=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C, H, W] -> the combined mixture [B, C', H, W] (CNN) or [B, C*H*W] (MLP)."""
        b, n, c, h, w = x.shape
        if self.config.transform == "random_ortho":
            mixed = torch.einsum("bnd,nde->bne", x.reshape(b, n, c * h * w), self.weight)
        else:
            y = self._grouped_conv(x.reshape(b, n * c, h, w), self.weight)
            if self.config.transform == "nonlinear_expand":
                y = torch.tanh(self._grouped_conv(torch.tanh(y), self.weight2))
            mixed = y.reshape(b, n, self.out_channels, h, w)
        return mixed.mean(dim=1) if self.config.combine == "mean" else mixed.sum(dim=1)


class LeNetBackbone(nn.Module):
    """The notebook's LeNet on a 20x20 mixture: conv3 -> pool -> conv4 -> pool -> conv3 -> 120 -> 84, tanh."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.C1 = nn.Conv2d(in_channels, 10, kernel_size=3)
        self.C3 = nn.Conv2d(10, 16, kernel_size=4)
        self.C5 = nn.Conv2d(16, 120, kernel_size=3)
        self.F6 = nn.Linear(120, FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.tanh(self.C1(x)), 2)
        x = F.max_pool2d(torch.tanh(self.C3(x)), 2)
        x = torch.tanh(self.C5(x)).flatten(1)
        return torch.tanh(self.F6(x))


class MLPBackbone(nn.Module):
    """A two-layer tanh MLP on the flattened mixture, ending in the same 84 features."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.F6 = nn.Linear(hidden, FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.F6(torch.tanh(self.fc1(x))))


class VisionDataMux(nn.Module):
    """images [B, N, C, H, W] float32 -> scores [B, N, num_labels] (tanh outputs; argmax is the class)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.transform = InstanceTransform(config)
        if config.arch == "cnn":
            self.backbone: nn.Module = LeNetBackbone(self.transform.out_channels)
        else:
            self.backbone = MLPBackbone(config.in_channels * config.image_size**2, config.mlp_hidden)
        self.demux = nn.ModuleList([nn.Linear(FEATURE_DIM, FEATURE_DIM) for _ in range(config.num_instances)])
        self.out = nn.Linear(FEATURE_DIM, config.num_labels)

    def init_weights(self, seed: int = 0) -> None:
        """Initialize a NEW model: torch's default layer init and a freshly drawn per-instance transform."""
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=gen)
                    module.bias.uniform_(-bound, bound, generator=gen)
        self.transform.init(gen)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.transform(images.to(torch.float32)))
        demuxed = torch.stack([torch.tanh(head(features)) for head in self.demux], dim=1)
        return torch.tanh(self.out(demuxed))


def build_vision_model(config: VisionConfig) -> VisionDataMux:
    """A vision DataMUX model for `config` (load a state dict or call init_weights)."""
    return VisionDataMux(config)


def preprocess_mnist(images: np.ndarray) -> np.ndarray:
    """uint8 [M, 28, 28] digits -> float32 [M, 1, 20, 20] in [0, 1] (the notebook's central crop)."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserInputError(f"MNIST images must be [M, 28, 28], got shape {images.shape}")
    crop = images[:, MNIST_CROP:-MNIST_CROP, MNIST_CROP:-MNIST_CROP]
    return (crop.astype(np.float32) / 255.0)[:, None, :, :]
