"""A small DataMUX trainer for the demo, the tests and quick experiments (CPU, a few threads).

Every batch is packed with the runtime's own packer (runtimes.packing), so a trained model has seen
instances padded, truncated and grouped exactly as a deployed runtime will feed them.

Two tasks:
- retrieval (the paper's warm-up): random token sequences in, each instance's own tokens out. A
  trained retrieval model is the end-to-end oracle for packing: a bundle must return every
  instance's own tokens, in order.
- sentiment (sequence classification): BERT-tokenized sentences, N per group, cross-entropy on
  [B, N, C], optionally with the retrieval loss as an auxiliary objective (DataMUX's
  task_loss_coeff / retrieval_loss_coeff).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.models import DataMuxTransformer, MuxConfig, build_model
from muxdeploy.models.presets import preset_config
from runtimes.errors import UserInputError
from runtimes.packing import default_filler, encode_token_instances, pack_groups

# Shared CPUs: one intra-op thread is as fast as two for the tiny models and far faster when the
# machine is busy (measured: 600 retrieval steps took 9 s on 1 thread vs 43 s on 2 under load).
DEFAULT_THREADS = 1
TINY_RETRIEVAL_VOCAB = 64
TINY_RETRIEVAL_STEPS = 600


@contextlib.contextmanager
def limited_threads(threads: int = DEFAULT_THREADS) -> Iterator[None]:
    """Run the block with `threads` torch intra-op threads (the machines we train on are shared), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def make_optimizer(
    model: nn.Module, lr: float, total_steps: int, warmup_fraction: float = 0.1, weight_decay: float = 0.01
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and LayerNorm) with linear warm-up then linear decay to zero."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "LayerNorm" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = max(1, int(total_steps * warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def new_model(config: MuxConfig, seed: int) -> DataMuxTransformer:
    """A freshly initialized model (weights and instance embedding drawn from `seed`)."""
    model = build_model(config)
    model.init_weights(seed)
    return model


# --- retrieval ------------------------------------------------------------------------------------------------------


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
    with limited_threads(threads), _progress(steps, "train retrieval", progress) as bar:
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


def train_tiny_retrieval(
    num_instances: int = 4, seq_len: int = 8, seed: int = 0, steps: int | None = None, progress: bool = False
) -> DataMuxTransformer:
    """A tiny retrieval model trained to ~100% token accuracy (the packing oracle for runtime tests).

    N=4, L=8 takes about 8-10 s on one quiet core (600 steps of 64 groups) and reaches >= 99.9% on
    seeds 0..4; larger N*L get more steps (see `tiny_retrieval_steps`; N=10, L=16 reached 99.9% at 1400 steps).
    """
    config = tiny_retrieval_config(num_instances, seq_len)
    steps = steps or tiny_retrieval_steps(num_instances, seq_len)
    return train_retrieval(config, steps=steps, batch_groups=64, lr=5e-3, seed=seed, progress=progress)
