"""Sequence classification on token-id instances, N per group: cross-entropy on [B, N, C], optionally with the
retrieval loss as an auxiliary objective (DataMUX's task_loss_coeff / retrieval_loss_coeff)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.core.errors import UserInputError
from muxdeploy.evaluation.metrics import IGNORE_LABEL
from muxdeploy.models import DataMuxTransformer, MuxConfig
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, num_groups, pack_groups, unpack_groups
from muxdeploy.training.loop import DEFAULT_THREADS, limited_threads, make_optimizer, new_model, progress_bar


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
        logits, targets = self.predict(hidden, input_ids, generator)
        if targets.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets)

    def predict(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [K, V] and target ranks [K] at the sampled retrievable positions (K may be 0). `generator` is a
        CPU generator: the same draws on every device."""
        b, n, length = input_ids.shape
        targets_all = self.vocab_map[input_ids.to(torch.int64)]
        valid = targets_all != IGNORE_LABEL
        if not self.index:  # MLP demux overwrites token 0 with the CLS id: it cannot be retrieved
            valid[..., 0] = False
        # k positions per instance, drawn among its retrievable positions (random scores, others last)
        scores = torch.rand((b, n, length), generator=generator).to(valid.device) + valid.float()
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
            slot = torch.arange(n, device=per.device)
            x = self.dense(per[:, slot, :, slot, :].permute(1, 0, 2, 3))
        logits = self.decoder(self.layer_norm(F.gelu(x)))
        return logits[keep], targets[keep]


@dataclass
class TrainResult:
    """A trained classifier and what happened while training it.

    With `dev` data: `best_step`/`best_dev_accuracy` name the evaluation whose weights the model holds (the
    best one), and `retrieval_token_accuracy` is the retrieval head's token accuracy on the dev groups at the
    end of the retrieval warm-up (None without a warm-up).
    """

    model: DataMuxTransformer
    steps: int
    seconds: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    best_step: int | None = None
    best_dev_accuracy: float | None = None
    retrieval_token_accuracy: float | None = None
    stopped_early: bool = False


def training_device(device: str | None) -> torch.device:
    """The device to train on: `device` as given, or CUDA when torch sees a GPU, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserInputError(f"unknown device {device!r} ({exc}); use cpu, cuda or cuda:K") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return resolved


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
    device: str | None = "cpu",
    patience_steps: int | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train a sequence classifier on token-id instances (see `tokenize_texts`) with N instances per group.

    Instances are encoded with the runtime's packer (truncation and padding to config.seq_len) and
    regrouped at random every epoch; the last group of an epoch is completed with filler instances
    whose outputs are ignored. Loss = task_loss_coeff * CE([B, N, C]) + retrieval_loss_coeff *
    retrieval CE (a training-only head; 0 turns it off); during the first `retrieval_warmup_epochs`
    only the retrieval loss trains (the paper's warm-up). `init` continues from an existing model
    (e.g. a retrieval warm-up's backbone). `steps` overrides `epochs`. With `dev`, dev accuracy is
    recorded after each epoch and the model returned holds the weights of the best evaluation after the
    warm-up; `patience_steps` then stops when that best is older than so many steps. `device`: "cpu",
    "cuda[:K]" or "auto"/None (CUDA where torch sees a GPU); the returned model is on the CPU.
    `max_seconds` stops training after that much wall time.
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
    target_device = training_device(device)
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
    model = (init if init is not None else new_model(config, seed)).to(target_device)
    model.train()
    aux = None
    if retrieval_loss_coeff > 0:
        vocab_map = RetrievalAuxHead.frequent_token_map(rows, config.vocab_size, config.pad_token_id, retrieval_vocab)
        aux = RetrievalAuxHead(config, vocab_map, retrieval_vocab, retrieval_positions).to(target_device)
    warmup_steps = round(retrieval_warmup_epochs * steps_per_epoch) if aux is not None else 0
    captured: dict[str, torch.Tensor] = {}
    hook = None
    params = nn.ModuleList([model] + ([aux] if aux is not None else []))
    if aux is not None:
        hook = model.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    optimizer, scheduler = make_optimizer(params, lr, total_steps, warmup_fraction, schedule=schedule)
    history: list[dict[str, float]] = []
    best: dict[str, torch.Tensor] | None = None
    best_step, best_acc, token_acc, stopped = None, None, None, False
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    try:
        with limited_threads(threads), progress_bar(total_steps, f"train N={n}", progress) as bar:
            while step < total_steps and not stopped:
                order = rng.permutation(len(rows))
                groups, group_labels = group_instances(rows[order], y[order], n, filler)
                for lo in range(0, len(groups), batch_groups):
                    batch = torch.from_numpy(groups[lo : lo + batch_groups]).to(target_device)
                    target = torch.from_numpy(group_labels[lo : lo + batch_groups]).to(target_device)
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
                    if step == warmup_steps and aux is not None and dev is not None:
                        token_acc = retrieval_token_accuracy(model, aux, dev[0], seed)
                        captured.clear()
                    if step % 50 == 0 or step >= total_steps:
                        loss_value = loss.item()  # a sync: not every step on a GPU
                        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                    bar.update(1)
                    if step >= total_steps or (max_seconds is not None and time.perf_counter() - start > max_seconds):
                        stopped = step < total_steps
                        break
                if dev is not None:
                    acc = evaluate_classifier(model, dev[0], dev[1], threads=threads)
                    captured.clear()
                    history.append({"step": step, "loss": loss.item(), "dev_accuracy": acc})
                    model.train()
                    if step > warmup_steps and (best_acc is None or acc > best_acc):
                        best_acc, best_step = acc, step
                        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if patience_steps is not None and best_step is not None and step - best_step > patience_steps:
                        stopped = True
            loss_value = loss.item()
    finally:
        if hook is not None:
            hook.remove()
    if best is not None:
        model.load_state_dict(best)
    return TrainResult(
        model.eval().cpu(),
        step,
        time.perf_counter() - start,
        loss_value,
        history,
        device=str(target_device),
        best_step=best_step,
        best_dev_accuracy=best_acc,
        retrieval_token_accuracy=token_acc,
        stopped_early=stopped,
    )


@torch.no_grad()
def retrieval_token_accuracy(
    model: DataMuxTransformer,
    aux: RetrievalAuxHead,
    ids: Sequence[Sequence[int]] | np.ndarray,
    seed: int = 0,
    batch_groups: int = 64,
) -> float:
    """Share of sampled token positions (among the retrieval head's vocabulary) whose token the retrieval head
    recovers from the muxed encoder output, on `ids` packed in order. Needs the head's forward hook in place."""
    config = model.config
    rows = encode_ids(ids, config)
    groups = pack_groups(rows, config.num_instances, default_filler(config.seq_len, config.pad_token_id))
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    captured: dict[str, torch.Tensor] = {}
    hook = model.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        for lo in range(0, len(groups), batch_groups):
            batch = torch.from_numpy(groups[lo : lo + batch_groups]).to(device)
            model(batch)
            logits, targets = aux.predict(captured.pop("h"), batch, gen)
            right += int((logits.argmax(-1) == targets).sum())
            total += int(targets.numel())
    finally:
        hook.remove()
        model.train(was_training)
    return right / total if total else float("nan")


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
    device = next(model.parameters()).device
    with limited_threads(threads):
        for lo in range(0, len(groups), batch_groups):
            outs.append(model(torch.from_numpy(groups[lo : lo + batch_groups]).to(device)).float().cpu().numpy())
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
