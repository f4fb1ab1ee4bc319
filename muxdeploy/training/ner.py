"""Named-entity recognition with token-classification DataMUX models: word/sub-token alignment and a small trainer
(entity-level scores are `muxdeploy.evaluation.metrics.entity_scores`).

Words are WordPiece-tokenized as the runtime's tokenizer does ([CLS] words [SEP], truncated to the model length);
each word's label sits on its first sub-token, every other position is ignored (-100); a word's prediction is read
back from its first sub-token, and words cut off by truncation are predicted "O".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from muxdeploy.evaluation.metrics import IGNORE_LABEL
from muxdeploy.models import DataMuxTransformer, MuxConfig, build_model
from muxdeploy.runtimes.packing import iter_batches, pack_groups, unpack_groups
from muxdeploy.training.datasets import Sentence


@dataclass
class EncodedNer:
    """Token ids [M, L] int32 (padded with pad_id), labels [M, L] int64 (-100 = ignored), and for each sentence
    the position of each word's first sub-token (-1 when truncated away)."""

    ids: np.ndarray
    labels: np.ndarray
    word_pos: list[np.ndarray]


def encode_ner(
    sentences: Sequence[Sentence], tokenizer: object, label2id: dict[str, int], seq_len: int, pad_id: int = 0
) -> EncodedNer:
    """Tokenize pre-split words with `tokenizer` (a tokenizers.Tokenizer) and align word labels to sub-tokens."""
    m = len(sentences)
    ids = np.full((m, seq_len), pad_id, dtype=np.int32)
    labels = np.full((m, seq_len), IGNORE_LABEL, dtype=np.int64)
    word_pos: list[np.ndarray] = []
    for row, (words, tags) in enumerate(sentences):
        enc = tokenizer.encode(words, is_pretokenized=True)  # type: ignore[attr-defined]
        toks, wids = enc.ids[:seq_len], enc.word_ids[:seq_len]
        if len(enc.ids) > seq_len:  # keep the closing [SEP] as the runtime's truncation does
            toks = [*enc.ids[: seq_len - 1], enc.ids[-1]]
            wids = [*enc.word_ids[: seq_len - 1], None]
        ids[row, : len(toks)] = toks
        pos = np.full(len(words), -1, dtype=np.int64)
        prev = None
        for t, w in enumerate(wids):
            if w is not None and w != prev:
                pos[w] = t
                labels[row, t] = label2id[tags[w]]
            prev = w
        word_pos.append(pos)
    return EncodedNer(ids, labels, word_pos)


def decode_words(logits: np.ndarray, word_pos: Sequence[np.ndarray], id2label: Sequence[str]) -> list[list[str]]:
    """Per-sentence word tags from token logits [M, L, C] (truncated words get "O")."""
    best = np.asarray(logits).argmax(axis=-1)
    out = []
    for row, pos in enumerate(word_pos):
        out.append([id2label[best[row, p]] if p >= 0 else "O" for p in pos])
    return out


def train_ner(
    config: MuxConfig,
    ids: np.ndarray,
    labels: np.ndarray,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> DataMuxTransformer:
    """Train a new token-classification DataMUX model on random N-sentence groups (fresh every epoch)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(config)
    model.init_weights(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n, seq = config.num_instances, ids.shape[1]
    usable = (len(ids) // n) * n
    x_all, y_all = torch.from_numpy(ids), torch.from_numpy(labels)
    steps = epochs * -(-usable // (n * batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(ids))[:usable])
        gx, gy = x_all[order].reshape(-1, n, seq), y_all[order].reshape(-1, n, seq)
        losses = []
        for start in range(0, gx.shape[0], batch_size):
            logits = model(gx[start : start + batch_size])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, config.num_labels),
                gy[start : start + batch_size].reshape(-1),
                ignore_index=IGNORE_LABEL,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        if progress is not None:
            progress(epoch, float(np.mean(losses)))
    return model.eval()


def predict_tokens(model: DataMuxTransformer, ids: np.ndarray, pad_id: int, max_batch: int = 64) -> np.ndarray:
    """Token logits [M, L, C] with sentences packed in order into N-slot groups as the runtime packs them."""
    n = model.config.num_instances
    groups = pack_groups(np.asarray(ids, dtype=np.int32), n, np.full(ids.shape[1], pad_id, dtype=np.int32))
    outs = []
    with torch.no_grad():
        for batch in iter_batches(groups, max_batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(batch))).numpy())
    return unpack_groups(np.concatenate(outs), len(ids))


def split_sentences(sentences: Sequence[Sentence], dev_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Shuffled train/dev split."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    n_dev = round(len(sentences) * dev_fraction)
    return [sentences[i] for i in order[n_dev:]], [sentences[i] for i in order[:n_dev]]
