"""Labelled data for `muxdeploy validate`: one JSONL line per instance, parsed for the bundle's task.

  classification:        {"text": "...", "label": "pos"}  or  {"input_ids": [...], "label": 1}
  token classification:  {"input_ids": [...], "labels": [...]}   one label per id (null or -100: not scored)
                         {"tokens": ["word", ...], "tags": ["B-person", ...]}   words, tokenized with the
                         bundle's tokenizer; the first sub-token of each word carries its tag
Labels are label names (from the manifest) or integer ids. Every bad line is a one-line UserInputError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.evaluation.metrics import IGNORE_LABEL

CLASSIFICATION = ("sequence_classification", "image_classification", "classification")
TOKEN = "token_classification"


@dataclass
class LabelledData:
    """Instances (as the runtime takes them), gold labels and the source line of each."""

    instances: list[Any]
    gold: list[Any]  # int per instance (classification) or int array per instance (token tasks)
    lines: list[int]


def _label_id(value: Any, names: dict[str, int] | None, where: str) -> int:
    """An integer label id from an id or a label name."""
    if isinstance(value, bool):
        raise UserInputError(f"{where}: label {value!r} is a boolean; use a label name or an integer id")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if names is None:
            raise UserInputError(f"{where}: label {value!r} is a name but the bundle has no label names; use ids")
        if value not in names:
            raise UserInputError(f"{where}: unknown label {value!r}; the bundle's labels are {', '.join(names)}")
        return names[value]
    raise UserInputError(f"{where}: label {value!r} is neither a label name nor an integer id")


def _token_labels(values: Any, names: dict[str, int] | None, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise UserInputError(f"{where}: token labels must be a list, one per token")
    return np.array(
        [IGNORE_LABEL if v is None or v == IGNORE_LABEL else _label_id(v, names, where) for v in values], dtype=np.int64
    )


def read_labelled(
    path: str | Path, manifest: Manifest, tokenizer: Any = None, limit: int | None = None
) -> LabelledData:
    """Parse a labelled JSONL file for the bundle's task; any bad line is a one-line UserInputError."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}; pass a JSONL file of labelled instances with --data")
    task = manifest.task
    if task not in (*CLASSIFICATION, TOKEN):
        raise UserInputError(
            f"validate scores classification and token-classification bundles; {manifest.bundle} is a {task} model"
        )
    labels = manifest.labels
    names = {name: i for i, name in enumerate(labels)} if labels else None
    num_labels = len(labels) if labels else None
    instances: list[Any] = []
    gold: list[Any] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise UserInputError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise UserInputError(f"{where}: expected a JSON object with text/input_ids and a label")
            if task == TOKEN:
                inst, tags = _token_line(obj, names, tokenizer, where)
                if num_labels is not None and tags.size and tags.max() >= num_labels:
                    raise UserInputError(
                        f"{where}: label id {int(tags.max())} is outside the bundle's {num_labels} labels"
                    )
                gold.append(tags)
            else:
                inst = _instance(obj, where)
                if "label" not in obj:
                    raise UserInputError(f'{where}: no "label"; each line needs the gold label')
                label = _label_id(obj["label"], names, where)
                if num_labels is not None and not 0 <= label < num_labels:
                    raise UserInputError(f"{where}: label id {label} is outside the bundle's {num_labels} labels")
                gold.append(label)
            instances.append(inst)
            lines.append(lineno)
            if limit is not None and len(instances) >= limit:
                break
    if not instances:
        raise UserInputError(f"{path} has no instances; write one JSON object per line")
    return LabelledData(instances, gold, lines)


def _instance(obj: dict[str, Any], where: str) -> Any:
    for key in ("input_ids", "text", "image"):
        if key in obj:
            return obj[key]
    raise UserInputError(f'{where}: no "text", "input_ids" or "image" field')


def _token_line(
    obj: dict[str, Any], names: dict[str, int] | None, tokenizer: Any, where: str
) -> tuple[Any, np.ndarray]:
    tags = obj.get("labels", obj.get("tags"))
    if tags is None:
        raise UserInputError(f'{where}: no "labels" (or "tags"); token classification needs one label per token')
    if "input_ids" in obj:
        ids = obj["input_ids"]
        gold = _token_labels(tags, names, where)
        if not isinstance(ids, list) or len(ids) != len(gold):
            n_ids = len(ids) if isinstance(ids, list) else "no"
            raise UserInputError(f"{where}: {n_ids} input_ids but {len(gold)} labels; give one label per id")
        return ids, gold
    if "tokens" in obj:
        words = obj["tokens"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise UserInputError(f'{where}: "tokens" must be a list of words (strings)')
        if len(words) != len(tags):
            raise UserInputError(f"{where}: {len(words)} tokens but {len(tags)} tags; give one tag per word")
        if tokenizer is None:
            raise UserInputError(
                f'{where}: "tokens" need the bundle\'s tokenizer, and this bundle has none; give input_ids'
            )
        word_tags = _token_labels(tags, names, where)
        enc = tokenizer.encode(words, is_pretokenized=True)
        gold = np.full(len(enc.ids), IGNORE_LABEL, dtype=np.int64)
        seen: set[int] = set()
        for pos, word in enumerate(enc.word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                gold[pos] = word_tags[word]
        return list(enc.ids), gold
    if "text" in obj:
        raise UserInputError(f'{where}: token labels need "input_ids" or pre-split "tokens", not raw "text"')
    raise UserInputError(f'{where}: no "input_ids" or "tokens" field')
