"""Shared helpers for precision tests: bundle copies, calibration files, a tokenizer made in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def copy_bundle(src: Path, dst: Path) -> Path:
    """A writable copy of a (read-only fixture) bundle."""
    shutil.copytree(src, dst)
    return dst


def write_ids_jsonl(path: Path, count: int, vocab: int = 1000, labels: int | None = 3, seed: int = 0) -> Path:
    """`count` lines of {"input_ids": [...], "label": k} with random lengths 3..15."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(count):
            row = {"input_ids": rng.integers(5, vocab, size=int(rng.integers(3, 16))).tolist()}
            if labels:
                row["label"] = int(rng.integers(0, labels))
            f.write(json.dumps(row) + "\n")
    return path


def add_word_tokenizer(bundle: Path, words: list[str]) -> None:
    """Give a bundle a tokenizer.json: a whitespace word-level tokenizer over `words` (ids 5.. ; [UNK]=4)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 4, **{w: 5 + i for i, w in enumerate(words)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    (bundle / "tokenizer.json").write_text(tok.to_str())
    manifest_path = bundle / "muxdeploy.json"
    data = json.loads(manifest_path.read_text())
    data["tokenizer"] = "tokenizer.json"
    manifest_path.write_text(json.dumps(data))


def listing(folder: Path) -> set[str]:
    """Every file name in a folder, hidden temporaries included."""
    return {p.name for p in folder.iterdir()}
