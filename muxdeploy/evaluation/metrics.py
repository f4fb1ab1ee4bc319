"""Scores of predicted labels against gold ones: accuracy, token accuracy and entity-span F1 over BIO tags.

Entity spans follow seqeval's default mode (and CoNLL's evaluation): a chunk opens at B-x, or at an I-x that
does not continue an open chunk of type x (after O or another type); anything else (O, another prefix) closes
it. Entity scores are micro precision, recall and F1 over exactly matching spans (type and boundaries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# a label id that is neither trained on nor scored (PyTorch cross_entropy's default ignore_index)
IGNORE_LABEL = -100


class EntitySpan(NamedTuple):
    """One entity chunk: its type and token positions [start, end)."""

    kind: str
    start: int
    end: int


def entity_spans(tags: Sequence[str]) -> set[EntitySpan]:
    """The entity chunks of one sequence of BIO/IOB2 tags."""
    spans: set[EntitySpan] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ
        if kind is not None and not continues:
            spans.add(EntitySpan(kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = typ, i
    return spans


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exactly matching entity spans of paired tag sequences (0.0 when empty)."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = entity_spans(g), entity_spans(p)
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": n_gold, "predicted": n_pred, "correct": tp}


def is_bio(labels: Sequence[str] | None) -> bool:
    """True when label names look like BIO tags (O, B-x, I-x)."""
    return bool(labels) and all(name == "O" or name[:2] in ("B-", "I-") for name in labels)


def classification_scores(gold: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """Accuracy of predicted label ids."""
    return {"accuracy": float(np.mean(gold == pred)) if gold.size else None}


def token_scores(
    gold: Sequence[np.ndarray], pred: Sequence[np.ndarray], labels: Sequence[str] | None
) -> dict[str, float | None]:
    """Token accuracy over scored positions (gold != IGNORE_LABEL) and, for BIO labels, entity-span micro F1 over
    those positions (None when neither side has an entity)."""
    names = list(labels) if labels is not None and is_bio(labels) else None
    right = total = 0
    gold_tags: list[list[str]] = []
    pred_tags: list[list[str]] = []
    for g, p in zip(gold, pred, strict=True):
        keep = g[: len(p)] != IGNORE_LABEL
        g_kept, p_kept = g[: len(p)][keep], p[keep]
        right += int(np.sum(g_kept == p_kept))
        total += int(keep.sum())
        if names is not None:
            gold_tags.append([names[i] for i in g_kept])
            pred_tags.append([names[i] for i in p_kept])
    entity_f1 = None
    if names is not None:
        scores = entity_scores(gold_tags, pred_tags)
        entity_f1 = scores["f1"] if scores["gold"] + scores["predicted"] else None
    return {"token_accuracy": right / total if total else None, "entity_f1": entity_f1}
