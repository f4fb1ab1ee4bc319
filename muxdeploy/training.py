"""A small DataMUX trainer for the demo, the tests and quick experiments (CPU, a few threads).

Every batch is packed with the runtime's own packer (muxdeploy.runtimes.packing), so a trained model has seen
instances padded, truncated and grouped exactly as a deployed runtime will feed them.

Two tasks:
- retrieval (the paper's warm-up): random token sequences in, each instance's own tokens out. A
  trained retrieval model is the end-to-end oracle for packing: a bundle must return every
  instance's own tokens, in order.
- sentiment (sequence classification): BERT-tokenized sentences, N per group, cross-entropy on
  [B, N, C], optionally with the retrieval loss as an auxiliary objective (DataMUX's
  task_loss_coeff / retrieval_loss_coeff).

What was measured for sentiment (tiny preset, VADER snippets, 1 thread per run on 2 shared cores;
dev = the 1,057 held-out sentences in shuffled order, majority class 50.9 %):
- N=1, L=48, lr 1e-3: 78% dev accuracy after 2 epochs (600 steps, ~70 s); lr 3e-4 is slower, 2e-3+ diverges.
- N=2, L=32, 32 groups per step, lr 3e-4: 70.9% after 1,000 steps (67 s).
- N=10 is hard for a width-64 model from scratch: one 64-d vector per position carries 10 instances.
  The model first learns the *group's* average sentiment (training loss stays ~0.68) and only later
  pulls instances apart. With L=32, 32 groups per step, linear warm-up/decay and 2,000 steps: lr 1e-3
  57.8% (153 s), lr 1.5e-3 / 2,500 steps 55.1%, lr 3e-4 54.5% and 54.8% (seeds 0, 1), a constant
  lr 1e-3 stayed at chance. A constant lr 3e-4 for 4,000 steps reached 73.3% on shuffled held-out
  groups (docs/PRECISION.md), which is past the demo's time budget. (An earlier evaluation packed the
  dev split in file order; the file is sorted by label, so groups were label-pure and the group
  average alone scored 87-96%: `split_sentiment` now shuffles.)
- Before the linear schedule at 32 groups per step, N=10 stayed at chance (50.9% = the majority class)
  in every run tried: 600-4000 steps, lr 5e-4..5e-3 at 16 groups per step, Gaussian or binary
  Hadamard, index or MLP demux, a filler curriculum (1 -> 10 active slots), the retrieval auxiliary
  loss, a retrieval warm-up, a bag-of-words loss on the head's slot features, and a 1/sqrt(fan_in)
  init. The paper fine-tunes a 12-layer model after a long retrieval warm-up; that does not fit a
  few minutes of CPU.
- Muxed training itself works when the signal is strong: a toy task whose label is one token
  reaches 100% at N=4 (MLP demux, binary Hadamard, 320 steps) and ~80% at N=10 (index demux).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.core.errors import UserInputError
from muxdeploy.models import DataMuxTransformer, MuxConfig, build_model
from muxdeploy.models.presets import preset_config
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, num_groups, pack_groups, unpack_groups

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


SCHEDULES = ("linear", "constant")


def make_optimizer(
    model: nn.Module,
    lr: float,
    total_steps: int,
    warmup_fraction: float = 0.1,
    weight_decay: float = 0.01,
    schedule: str = "linear",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and LayerNorm); `schedule` linear = linear warm-up then linear decay to zero,
    constant = the same warm-up then a constant rate."""
    if schedule not in SCHEDULES:
        raise UserInputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "LayerNorm" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


# --- sentiment (sequence classification) ----------------------------------------------------------------------------

IGNORE_LABEL = -100
SENTIMENT_LABELS = ["negative", "positive"]
# BERT tokens per snippet ([CLS] and [SEP] included): median 26, p99 55, max 79. 32 keeps the whole
# snippet for most and the first 30 word pieces of the rest, at 2/3 of the compute of 48 (96.4% whole).
SENTIMENT_SEQ_LEN = 32
# Defaults of `train_sentiment` (measured on 2 shared cores; see the module docstring for what was tried):
# a fixed number of optimizer steps, whatever N (at N=10 that is ~67 passes over the 9,511 sentences).
SENTIMENT_STEPS = 2000
SENTIMENT_RECIPE: dict[str, Any] = {"batch_groups": 32, "lr": 1e-3}


def tokenize_texts(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of each text exactly as the runtime makes them: [CLS] text [SEP], truncated to `seq_len`, unpadded."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's truncation/padding settings stay untouched
    tok.no_padding()
    tok.enable_truncation(max_length=seq_len)
    return [enc.ids for enc in tok.encode_batch(list(texts))]


def encode_ids(instances: Sequence[Sequence[int]] | np.ndarray, config: MuxConfig) -> np.ndarray:
    """[M, L] int32 rows through the runtime's packer (truncate/pad to config.seq_len); refuses bad instances."""
    encoded = encode_token_instances(instances, config.seq_len, config.pad_token_id, config.vocab_size)
    encoded.raise_first_error()
    return encoded.ids


def group_instances(
    rows: np.ndarray, labels: np.ndarray, num_instances: int, filler: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[M, L] rows + [M] labels -> [G, N, L] groups + [G, N] labels; filler slots get IGNORE_LABEL."""
    groups = pack_groups(rows, num_instances, filler)
    group_labels = pack_groups(labels.astype(np.int64), num_instances, np.int64(IGNORE_LABEL))
    return groups, group_labels


class RetrievalAuxHead(nn.Module):
    """Training-only retrieval head on the encoder output (DataMUX's auxiliary loss; not part of the checkpoint).

    Index demux: concat(h[slot i], h[t]) -> dense -> GELU -> LayerNorm -> decoder; MLP demux: a per-instance
    projection of h[t] instead of the slot pairing. Evaluated at `positions` sampled non-pad positions per
    instance, and over the `aux_vocab` most frequent training tokens only (rarer tokens are not targets):
    a 30522-way projection at every position would cost more than the whole backbone.
    """

    def __init__(self, config: MuxConfig, vocab_map: torch.Tensor, aux_vocab: int, positions: int = 4) -> None:
        super().__init__()
        d = config.hidden_size
        self.prefix_len = config.prefix_len
        self.index = config.demuxing_variant == "index"
        self.k = positions
        self.pad_id = config.pad_token_id
        self.register_buffer("vocab_map", vocab_map, persistent=False)
        self.dense = nn.Linear(2 * d if self.index else d, d)
        self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(d, aux_vocab)
        if not self.index:
            self.instance_proj = nn.Linear(d, d * config.num_instances)

    @staticmethod
    def frequent_token_map(rows: np.ndarray, vocab_size: int, pad_id: int, aux_vocab: int) -> torch.Tensor:
        """[V] map from token id to its frequency rank among the training tokens (< aux_vocab), else IGNORE_LABEL."""
        counts = np.bincount(rows.reshape(-1), minlength=vocab_size)
        counts[pad_id] = 0
        top = np.argsort(-counts, kind="stable")[:aux_vocab]
        top = top[counts[top] > 0]
        mapping = np.full(vocab_size, IGNORE_LABEL, dtype=np.int64)
        mapping[top] = np.arange(len(top))
        return torch.from_numpy(mapping)

    def loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cross-entropy of the sampled positions' predicted tokens against the instances' own ids."""
        b, n, length = input_ids.shape
        targets_all = self.vocab_map[input_ids.to(torch.int64)]
        valid = targets_all != IGNORE_LABEL
        if not self.index:  # MLP demux overwrites token 0 with the CLS id: it cannot be retrieved
            valid[..., 0] = False
        # k positions per instance, drawn among its retrievable positions (random scores, others last)
        scores = torch.rand((b, n, length), generator=generator) + valid.float()
        pos = scores.topk(min(self.k, length), dim=-1).indices  # [B, N, K]
        keep = valid.gather(-1, pos)
        targets = targets_all.gather(-1, pos)
        tokens = hidden[:, self.prefix_len :, :]  # [B, L, D]
        d = tokens.shape[-1]
        picked = tokens.gather(1, pos.reshape(b, -1, 1).expand(-1, -1, d)).reshape(b, n, -1, d)
        if self.index:
            slots = hidden[:, :n, :].unsqueeze(2).expand_as(picked)
            x = self.dense(torch.cat([slots, picked], dim=-1))
        else:
            per = self.instance_proj(picked).reshape(b, n, picked.shape[2], n, d)
            x = self.dense(per[:, torch.arange(n), :, torch.arange(n), :].permute(1, 0, 2, 3))
        logits = self.decoder(self.layer_norm(F.gelu(x)))
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep], targets[keep])


@dataclass
class TrainResult:
    """A trained classifier and what happened while training it."""

    model: DataMuxTransformer
    steps: int
    seconds: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_classifier(
    config: MuxConfig,
    ids: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    epochs: float = 3.0,
    batch_groups: int = 32,
    steps: int | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    retrieval_loss_coeff: float = 0.0,
    task_loss_coeff: float = 1.0,
    retrieval_positions: int = 4,
    retrieval_vocab: int = 2048,
    retrieval_warmup_epochs: float = 0.0,
    warmup_fraction: float = 0.1,
    schedule: str = "linear",
    clip_norm: float | None = 1.0,
    threads: int = DEFAULT_THREADS,
    progress: bool = True,
    init: DataMuxTransformer | None = None,
    dev: tuple[Sequence[Sequence[int]] | np.ndarray, Sequence[int] | np.ndarray] | None = None,
) -> TrainResult:
    """Train a sequence classifier on token-id instances (see `tokenize_texts`) with N instances per group.

    Instances are encoded with the runtime's packer (truncation and padding to config.seq_len) and
    regrouped at random every epoch; the last group of an epoch is completed with filler instances
    whose outputs are ignored. Loss = task_loss_coeff * CE([B, N, C]) + retrieval_loss_coeff *
    retrieval CE (a training-only head; 0 turns it off); during the first `retrieval_warmup_epochs`
    only the retrieval loss trains (the paper's warm-up). `init` continues from an existing model
    (e.g. a retrieval warm-up's backbone). `steps` overrides `epochs`. With `dev`, dev accuracy is
    recorded after each epoch.
    """
    if config.task != "sequence_classification":
        raise UserInputError(f"train_classifier needs a sequence_classification config, got task {config.task!r}")
    rows = encode_ids(ids, config)
    y = np.asarray(labels, dtype=np.int64)
    if len(rows) != len(y):
        raise UserInputError(f"{len(rows)} instances but {len(y)} labels; give one label per instance")
    if len(rows) == 0:
        raise UserInputError("no training instances; give at least one")
    if y.min() < 0 or y.max() >= config.num_labels:
        raise UserInputError(f"labels must be in 0..{config.num_labels - 1}, found {int(y.min())}..{int(y.max())}")
    if epochs <= 0 or batch_groups < 1:
        raise UserInputError(f"epochs must be > 0 and batch_groups >= 1, got {epochs} and {batch_groups}")
    n = config.num_instances
    filler = default_filler(config.seq_len, config.pad_token_id)
    groups_per_epoch = num_groups(len(rows), n)
    steps_per_epoch = -(-groups_per_epoch // batch_groups)
    total_steps = steps if steps is not None else max(1, round(epochs * steps_per_epoch))
    if total_steps < 1:
        raise UserInputError(f"steps must be >= 1, got {total_steps}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = init if init is not None else new_model(config, seed)
    model.train()
    aux = None
    if retrieval_loss_coeff > 0:
        vocab_map = RetrievalAuxHead.frequent_token_map(rows, config.vocab_size, config.pad_token_id, retrieval_vocab)
        aux = RetrievalAuxHead(config, vocab_map, retrieval_vocab, retrieval_positions)
    warmup_steps = round(retrieval_warmup_epochs * steps_per_epoch) if aux is not None else 0
    captured: dict[str, torch.Tensor] = {}
    hook = None
    params = nn.ModuleList([model] + ([aux] if aux is not None else []))
    if aux is not None:
        hook = model.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    optimizer, scheduler = make_optimizer(params, lr, total_steps, warmup_fraction, schedule=schedule)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    try:
        with limited_threads(threads), _progress(total_steps, f"train N={n}", progress) as bar:
            while step < total_steps:
                order = rng.permutation(len(rows))
                groups, group_labels = group_instances(rows[order], y[order], n, filler)
                for lo in range(0, len(groups), batch_groups):
                    batch = torch.from_numpy(groups[lo : lo + batch_groups])
                    target = torch.from_numpy(group_labels[lo : lo + batch_groups])
                    logits = model(batch)
                    task_coeff = 0.0 if step < warmup_steps else task_loss_coeff
                    loss = task_coeff * F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_LABEL
                    )
                    if aux is not None:
                        loss = loss + retrieval_loss_coeff * aux.loss(captured.pop("h"), batch, gen)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip_norm is not None:
                        nn.utils.clip_grad_norm_(params.parameters(), clip_norm)
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    loss_value = loss.item()
                    bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                    bar.update(1)
                    if step >= total_steps:
                        break
                if dev is not None:
                    acc = evaluate_classifier(model, dev[0], dev[1], threads=threads)
                    history.append({"step": step, "loss": loss_value, "dev_accuracy": acc})
                    model.train()
    finally:
        if hook is not None:
            hook.remove()
    return TrainResult(model.eval(), step, time.perf_counter() - start, loss_value, history)


@torch.no_grad()
def predict_classifier(
    model: DataMuxTransformer,
    ids: Sequence[Sequence[int]] | np.ndarray,
    batch_groups: int = 64,
    threads: int = DEFAULT_THREADS,
) -> np.ndarray:
    """Logits [M, C] for M instances, packed in order by the runtime's packer (fillers in the last group)."""
    config = model.config
    rows = encode_ids(ids, config)
    groups = pack_groups(rows, config.num_instances, default_filler(config.seq_len, config.pad_token_id))
    was_training = model.training
    model.eval()
    outs = []
    with limited_threads(threads):
        for lo in range(0, len(groups), batch_groups):
            outs.append(model(torch.from_numpy(groups[lo : lo + batch_groups])).numpy())
    model.train(was_training)
    if not outs:
        return np.zeros((0, config.num_labels), dtype=np.float32)
    return unpack_groups(np.concatenate(outs), len(rows))


def evaluate_classifier(
    model: DataMuxTransformer,
    ids: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    num_instances: int | None = None,
    threads: int = DEFAULT_THREADS,
) -> float:
    """Accuracy of the model on (ids, labels), grouping instances N at a time in order as the runtime does."""
    n = model.config.num_instances
    if num_instances is not None and num_instances != n:
        raise UserInputError(f"the model was trained with N={n}; it cannot be evaluated at N={num_instances}")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise UserInputError("no instances to evaluate")
    pred = predict_classifier(model, ids, threads=threads).argmax(-1)
    return float((pred == y).mean())


# --- the sentiment recipe (CLI, demo) -------------------------------------------------------------------------------


@dataclass
class SentimentRun:
    """A sentiment model trained on the VADER snippets, with its tokenizer and held-out data."""

    result: TrainResult
    dev_accuracy: float
    tokenizer_json: str
    dev_texts: list[str]
    dev_labels: list[int]
    train_size: int

    @property
    def model(self) -> DataMuxTransformer:
        return self.result.model


def sentiment_config(
    preset: str,
    num_instances: int,
    seq_len: int = SENTIMENT_SEQ_LEN,
    muxing: str = "gaussian_hadamard",
    demuxing: str = "index",
) -> MuxConfig:
    """A preset-sized binary sentiment classifier over the BERT vocabulary (dropout from the preset's config)."""
    return preset_config(
        preset, num_instances, seq_len=seq_len, num_labels=2, muxing_variant=muxing, demuxing_variant=demuxing
    )


def train_sentiment(
    preset: str = "tiny",
    num_instances: int = 10,
    seq_len: int = SENTIMENT_SEQ_LEN,
    epochs: float | None = None,
    steps: int | None = None,
    muxing: str = "gaussian_hadamard",
    demuxing: str = "index",
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> SentimentRun:
    """Train on the VADER movie-review snippets (train split), evaluate on the dev split; `limit` caps both."""
    from muxdeploy.datasets import split_sentiment
    from muxdeploy.tokenizer import bert_tokenizer

    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be >= 1, got {limit}")
    config = sentiment_config(preset, num_instances, seq_len, muxing, demuxing)
    train, dev = split_sentiment(seed=0)
    if limit is not None:
        train, dev = train[:limit], dev[: max(1, limit // 4)]
    tokenizer = bert_tokenizer()
    train_ids = tokenize_texts(tokenizer, [t for t, _ in train], seq_len)
    dev_ids = tokenize_texts(tokenizer, [t for t, _ in dev], seq_len)
    kwargs = {**SENTIMENT_RECIPE, **train_kwargs}
    if epochs is not None:
        kwargs["epochs"] = epochs
    elif steps is None:
        steps = SENTIMENT_STEPS
    result = train_classifier(
        config, train_ids, [y for _, y in train], steps=steps, seed=seed, progress=progress, **kwargs
    )
    dev_labels = [y for _, y in dev]
    accuracy = evaluate_classifier(result.model, dev_ids, dev_labels, threads=kwargs.get("threads", DEFAULT_THREADS))
    return SentimentRun(result, accuracy, tokenizer.to_str(), [t for t, _ in dev], dev_labels, len(train))
