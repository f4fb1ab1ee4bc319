"""Retrieval, the paper's warm-up task: random token sequences in, each instance's own tokens out.

A trained retrieval model is the end-to-end oracle for packing: a bundle must return every instance's own
tokens, in order. `retrieval_recipe` is what `muxdeploy train --task retrieval` trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.core.errors import UserInputError
from muxdeploy.models import DataMuxTransformer, MuxConfig
from muxdeploy.models.presets import preset_config
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups
from muxdeploy.training.loop import DEFAULT_THREADS, limited_threads, make_optimizer, new_model, progress_bar

TINY_RETRIEVAL_VOCAB = 64
TINY_RETRIEVAL_STEPS = 600
RETRIEVAL_SEQ_LEN = 8  # tokens per instance when `muxdeploy train --task retrieval` is given no --seq-len


def tiny_retrieval_config(
    num_instances: int = 4, seq_len: int = 8, vocab_size: int = TINY_RETRIEVAL_VOCAB
) -> MuxConfig:
    """The tiny preset (2 layers, width 64) as a retrieval model over a small vocabulary with BERT-like ids.

    Id 0 is [PAD]; 1 fills the index prefix, 2 is its CLS, 3..3+N-1 mark the slots (as `preset_config`
    places them in BERT's [unusedK] range); content tokens are drawn from the ids after those.
    Dropout is off: retrieval is a memorization-free copy task and trains fastest without it.
    """
    if vocab_size < num_instances + 8:
        raise UserInputError(
            f"vocab_size {vocab_size} leaves too few content ids for N={num_instances}; use a larger vocab_size"
        )
    return preset_config(
        "tiny",
        num_instances,
        task="retrieval",
        seq_len=seq_len,
        vocab_size=vocab_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def retrieval_token_range(config: MuxConfig) -> tuple[int, int]:
    """Content ids [low, high) for random retrieval sequences: everything above the special ids."""
    special = [config.pad_token_id, config.mux_prefix_filler_id, config.mux_cls_id, *config.slot_ids]
    low = max(i for i in special if i < config.vocab_size) + 1
    if low >= config.vocab_size - 1:
        raise UserInputError(f"the vocabulary (size {config.vocab_size}) has no room for content ids above {low - 1}")
    return low, config.vocab_size


def random_token_instances(
    rng: np.random.Generator, count: int, seq_len: int, low: int, high: int, min_len: int = 1
) -> list[np.ndarray]:
    """`count` random id sequences with ids in [low, high) and lengths uniform in [min_len, seq_len]."""
    lengths = rng.integers(min_len, seq_len + 1, size=count)
    flat = rng.integers(low, high, size=int(lengths.sum()))
    return np.split(flat, np.cumsum(lengths)[:-1])


def random_retrieval_groups(
    config: MuxConfig,
    rng: np.random.Generator,
    num_groups: int,
    token_range: tuple[int, int] | None = None,
    min_len: int = 1,
) -> np.ndarray:
    """[G, N, L] int32 groups of random sequences, padded and grouped by the runtime's packer."""
    low, high = token_range or retrieval_token_range(config)
    n, length = config.num_instances, config.seq_len
    instances = random_token_instances(rng, num_groups * n, length, low, high, min_len)
    encoded = encode_token_instances(instances, length, config.pad_token_id, config.vocab_size)
    encoded.raise_first_error()
    return pack_groups(encoded.ids, n, default_filler(length, config.pad_token_id))


def retrieval_loss(logits: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Cross-entropy of [B, N, L, V] logits against the input ids [B, N, L] at non-pad positions."""
    targets = input_ids.to(torch.int64)
    mask = targets != pad_id
    return F.cross_entropy(logits[mask], targets[mask])


def train_retrieval(
    config: MuxConfig,
    steps: int,
    batch_groups: int,
    lr: float,
    seed: int,
    progress: bool = True,
    token_range: tuple[int, int] | None = None,
    min_len: int = 1,
    threads: int = DEFAULT_THREADS,
) -> DataMuxTransformer:
    """Train a retrieval model from scratch on fresh random sequences each step; returns it in eval mode."""
    if config.task != "retrieval":
        raise UserInputError(f"train_retrieval needs a retrieval config, got task {config.task!r}")
    if steps < 1 or batch_groups < 1:
        raise UserInputError(f"steps and batch_groups must be >= 1, got {steps} and {batch_groups}")
    token_range = token_range or retrieval_token_range(config)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = new_model(config, seed)
    model.train()
    optimizer, scheduler = make_optimizer(model, lr, steps)
    with limited_threads(threads), progress_bar(steps, "train retrieval", progress) as bar:
        for _ in range(steps):
            ids = torch.from_numpy(random_retrieval_groups(config, rng, batch_groups, token_range, min_len))
            loss = retrieval_loss(model(ids), ids, config.pad_token_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
    return model.eval()


@torch.no_grad()
def retrieval_accuracy(
    model: DataMuxTransformer,
    num_groups: int = 256,
    seed: int = 12345,
    token_range: tuple[int, int] | None = None,
) -> float:
    """Token accuracy (non-pad positions) of a retrieval model on fresh random groups."""
    config = model.config
    groups = random_retrieval_groups(config, np.random.default_rng(seed), num_groups, token_range)
    ids = torch.from_numpy(groups)
    was_training = model.training
    model.eval()
    with limited_threads():
        pred = model(ids).argmax(-1)
    model.train(was_training)
    mask = ids != config.pad_token_id
    return float((pred[mask] == ids[mask].to(torch.int64)).float().mean())


def tiny_retrieval_steps(num_instances: int, seq_len: int) -> int:
    """Steps that take the tiny retrieval model to ~100%: 600 at N*L <= 32, growing with sqrt(N*L) above."""
    return int(TINY_RETRIEVAL_STEPS * max(1.0, num_instances * seq_len / 32) ** 0.5)


@dataclass(frozen=True)
class RetrievalRecipe:
    """What to train for retrieval: the model's config, the optimizer steps, groups per step and the peak lr."""

    config: MuxConfig
    steps: int
    batch_groups: int = 64
    lr: float = 5e-3

    def train(self, seed: int = 0, threads: int = DEFAULT_THREADS, progress: bool = True) -> DataMuxTransformer:
        """Train a new model by this recipe (`train_retrieval`); returns it in eval mode."""
        return train_retrieval(
            self.config, self.steps, self.batch_groups, self.lr, seed, progress=progress, threads=threads
        )


def retrieval_recipe(
    preset: str = "tiny",
    num_instances: int = 4,
    seq_len: int = RETRIEVAL_SEQ_LEN,
    steps: int | None = None,
    muxing: str = "gaussian_hadamard",
    demuxing: str = "index",
    lr: float = 5e-3,
) -> RetrievalRecipe:
    """The retrieval recipe of `muxdeploy train --task retrieval`: `tiny_retrieval_config`, or for another preset or
    mixing the preset at the same small vocabulary with dropout off; `tiny_retrieval_steps` unless `steps` is given."""
    config = tiny_retrieval_config(num_instances, seq_len)
    if preset != "tiny" or muxing != "gaussian_hadamard" or demuxing != "index":
        config = preset_config(
            preset,
            num_instances,
            task="retrieval",
            seq_len=seq_len,
            vocab_size=config.vocab_size,
            muxing_variant=muxing,
            demuxing_variant=demuxing,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    return RetrievalRecipe(config, steps or tiny_retrieval_steps(num_instances, seq_len), lr=lr)


def train_tiny_retrieval(
    num_instances: int = 4, seq_len: int = 8, seed: int = 0, steps: int | None = None, progress: bool = False
) -> DataMuxTransformer:
    """A tiny retrieval model trained to ~100% token accuracy (the packing oracle for runtime tests).

    N=4, L=8 takes about 8-10 s on one quiet core (600 steps of 64 groups) and reaches >= 99.9% on
    seeds 0..4; larger N*L get more steps (see `tiny_retrieval_steps`; N=10, L=16 reached 99.9% at 1400 steps).
    """
    return retrieval_recipe("tiny", num_instances, seq_len, steps).train(seed, progress=progress)
