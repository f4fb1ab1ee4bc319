"""Model outputs -> one plain dict per instance (numpy arrays inside). The result types, documented:

- classification (sequence or image; output [C] per instance):
  ``{"label": labels[label_id] or label_id, "label_id": int, "logits": np.ndarray [C]}``
- token classification (output [L, C] per instance), cut to the instance's length (after truncation):
  ``{"labels": [name or id per token], "label_ids": np.ndarray [len], "logits": np.ndarray [len, C]}``
- retrieval (output [L, V] per instance): ``{"token_ids": np.ndarray [len]}`` (argmax per position).

`to_jsonable` turns a result into JSON-ready Python values.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small result objects (they hold no cycles).

    Building a million dicts otherwise triggers thousands of collections and runs 2-4x slower.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def format_outputs(
    task: str, outputs: np.ndarray, lengths: np.ndarray, labels: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Per-instance results for `outputs` [M, ...] (fillers already dropped) and true `lengths` [M]."""
    if outputs.ndim == 2:
        ids = outputs.argmax(axis=1)
        id_list = ids.tolist()
        names = np.asarray(labels, dtype=object)[ids].tolist() if labels else id_list
        return [{"label": n, "label_id": i, "logits": row} for n, i, row in zip(names, id_list, outputs, strict=True)]
    cut = np.minimum(lengths, outputs.shape[1]).tolist()
    ids = outputs.argmax(axis=-1).astype(np.int64)
    if task == "retrieval":
        return [{"token_ids": row[:k]} for row, k in zip(ids, cut, strict=True)]
    table = np.asarray(labels, dtype=object) if labels else None
    results = []
    for row_ids, row_logits, k in zip(ids, outputs, cut, strict=True):
        label_ids = row_ids[:k]
        names = table[label_ids].tolist() if table is not None else label_ids.tolist()
        results.append({"labels": names, "label_ids": label_ids, "logits": row_logits[:k]})
    return results


def to_jsonable(result: Any) -> Any:
    """A result (or an exception) as JSON-ready values: arrays become lists, errors {"error": message}."""
    if isinstance(result, BaseException):
        return {"error": str(result)}
    if isinstance(result, dict):
        return {k: to_jsonable(v) for k, v in result.items()}
    if isinstance(result, np.ndarray):
        return result.tolist()
    if isinstance(result, np.generic):
        return result.item()
    return result
