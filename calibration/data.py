"""Calibration data: the user's instances packed into N-slot groups exactly as the runtime packs them.

Reads JSONL (`text` or `input_ids` per line, optional `label`) or `.npz` (`input_ids` [M, T], or for
image bundles `images` [M, *image shape] as the runtime takes them; optional `labels` [M]), encodes
with the runtime's packer (muxdeploy.runtimes.packing), assigns instances to groups by a seeded shuffle
(activations after the multiplexer depend on which instances share a group), and splits the groups into
calibration and held-out sets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.packing import encode_token_instances, iter_batches, pack_groups

CALIB_METHODS = ("max", "entropy", "percentile")
DEFAULT_CALIB_SIZE = 512
HELD_OUT_FRACTION = 0.5
MAX_HELD_OUT_INSTANCES = 4096


@dataclass
class RawInstances:
    """What a calibration file holds: token-id instances (or texts) and optional labels."""

    instances: list[Any] | np.ndarray
    labels: list[Any] | None
    is_text: bool
    is_image: bool = False


@dataclass
class CalibrationSet:
    """Packed groups for calibration and for held-out evaluation.

    `held_out_labels[g, i]` is the label index of the instance in slot i of held-out group g, or -1 for a
    filler slot or an unlabeled file; `held_out_instances` counts real (non-filler) held-out instances.
    """

    calib_groups: np.ndarray
    held_out_groups: np.ndarray
    held_out_labels: np.ndarray | None
    held_out_instances: int
    num_instances_read: int
    source: str
    seed: int
    disjoint: bool = True

    def reader(self, batch: int = 8, progress: bool = False) -> GroupFeedReader:
        """An onnxruntime-style data reader over the calibration groups."""
        return GroupFeedReader(self.calib_groups, batch=batch, progress=progress)

    def summary(self) -> dict[str, Any]:
        """Facts for the manifest."""
        return {
            "source": self.source,
            "instances": self.num_instances_read,
            "calibration_groups": int(self.calib_groups.shape[0]),
            "held_out_groups": int(self.held_out_groups.shape[0]),
            "held_out_instances": int(self.held_out_instances),
            "seed": self.seed,
            "held_out_disjoint": self.disjoint,
        }


class GroupFeedReader:
    """onnxruntime's CalibrationDataReader protocol: `get_next()` returns {input name: [B, N, L] int32} or None."""

    def __init__(self, groups: np.ndarray, batch: int = 8, input_name: str = "input_ids", progress: bool = False):
        self.groups = groups
        self.batch = max(1, int(batch))
        self.input_name = input_name
        self.progress = progress
        self._it: Iterator[np.ndarray] | None = None
        self._bar: Any = None

    def __len__(self) -> int:
        return -(-self.groups.shape[0] // self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None when the groups are used up."""
        if self._it is None:
            self._it = iter_batches(self.groups, self.batch)
            if self.progress:
                from tqdm import tqdm

                self._bar = tqdm(total=self.groups.shape[0], desc="calibrating", unit="group", leave=False)
        feed = next(self._it, None)
        if feed is None:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return None
        if self._bar is not None:
            self._bar.update(feed.shape[0])
        dtype = np.int32 if feed.dtype.kind in "iu" else feed.dtype  # token ids int32; image pixels as they are
        return {self.input_name: np.ascontiguousarray(feed, dtype=dtype)}

    def rewind(self) -> None:
        """Start over from the first group."""
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed


def read_calibration_file(path: str | Path) -> RawInstances:
    """Read a JSONL or .npz calibration file; any problem is a one-line UserInputError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"calibration file not found: {path}; pass --calib-data with a JSONL or .npz file")
    if path.suffix == ".npz":
        return _read_npz(path)
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> RawInstances:
    instances: list[Any] = []
    labels: list[Any] = []
    kinds: set[str] = set()
    hint = 'each line must be a JSON object with "text" (a string) or "input_ids" (a list of ints), optionally "label"'
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise UserInputError(f"{path} line {lineno}: not valid JSON ({exc.msg}); {hint}") from None
            if not isinstance(obj, dict):
                raise UserInputError(f"{path} line {lineno}: is a {type(obj).__name__}, not an object; {hint}")
            if isinstance(obj.get("text"), str):
                kinds.add("text")
                instances.append(obj["text"])
            elif isinstance(obj.get("input_ids"), list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in obj["input_ids"]
            ):
                kinds.add("input_ids")
                instances.append(obj["input_ids"])
            else:
                raise UserInputError(f'{path} line {lineno}: has no usable "text" or "input_ids"; {hint}')
            labels.append(obj.get("label"))
            if len(kinds) > 1:
                raise UserInputError(f'{path} line {lineno}: mixes "text" and "input_ids" lines; use one kind per file')
    if not instances:
        raise UserInputError(f"calibration file {path} is empty; {hint}")
    has_labels = all(lb is not None for lb in labels)
    return RawInstances(instances, labels if has_labels else None, is_text=kinds == {"text"})


def _read_npz(path: Path) -> RawInstances:
    try:
        data = np.load(path, allow_pickle=False)
        ids = data["input_ids"] if "input_ids" in data.files else None
        images = data["images"] if "images" in data.files else None
        labels = data["labels"] if "labels" in data.files else None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez") from None
    if ids is None and images is not None:
        if images.ndim < 2 or images.dtype.kind not in "fiu" or images.shape[0] == 0:
            raise UserInputError(
                f"{path}: images has shape {images.shape} dtype {images.dtype}; save a non-empty numeric array "
                "[M, *image shape] of model inputs"
            )
        name, rows = "images", images
    elif ids is None:
        raise UserInputError(
            f"{path} has no 'input_ids' array; save [M, T] int token ids as input_ids, or images for an image "
            "bundle (and optional labels)"
        )
    else:
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise UserInputError(
                f"{path}: input_ids has shape {ids.shape} dtype {ids.dtype}; it must be a 2-D integer array [M, T]"
            )
        if ids.shape[0] == 0:
            raise UserInputError(f"calibration file {path} holds no instances (input_ids has 0 rows)")
        name, rows = "input_ids", ids
    if labels is not None and labels.shape[:1] != rows.shape[:1]:
        raise UserInputError(f"{path}: labels has {labels.shape[0]} entries but {name} has {rows.shape[0]} rows")
    label_list = labels.tolist() if labels is not None else None
    if name == "images":
        return RawInstances(images, label_list, is_text=False, is_image=True)
    return RawInstances(list(ids), label_list, is_text=False)


def tokenize(texts: list[str], manifest: Manifest) -> list[list[int]]:
    """Token ids of `texts` with the bundle's tokenizer.json (the `tokenizers` library)."""
    tok_path = manifest.tokenizer_file
    if tok_path is None or not tok_path.is_file():
        raise UserInputError(
            f"the calibration file holds text but bundle {manifest.bundle} has no tokenizer.json; "
            'pass token ids ("input_ids") instead, or export from a checkpoint that carries a tokenizer'
        )
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise UserInputError(f"{tok_path} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
    return [enc.ids for enc in tokenizer.encode_batch(texts)]


def label_indices(labels: list[Any] | None, manifest: Manifest) -> np.ndarray | None:
    """Labels as class indices (names are looked up in the manifest's labels); None when unlabeled."""
    if labels is None:
        return None
    names = manifest.labels or []
    out = np.empty(len(labels), dtype=np.int64)
    for i, lb in enumerate(labels):
        if isinstance(lb, str) and lb in names:
            out[i] = names.index(lb)
        elif isinstance(lb, (int, np.integer)) and not isinstance(lb, bool) and (not names or 0 <= lb < len(names)):
            out[i] = int(lb)
        else:
            raise UserInputError(
                f"calibration instance {i}: label {lb!r} is neither a class index nor one of the bundle's labels "
                f"{names}"
            )
    return out


def build_calibration_set(
    path: str | Path,
    manifest: Manifest,
    calib_size: int = DEFAULT_CALIB_SIZE,
    seed: int = 0,
    held_out_fraction: float = HELD_OUT_FRACTION,
) -> CalibrationSet:
    """Read, tokenize, encode and pack a calibration file into calibration and held-out groups.

    Instances are shuffled with `seed`; a `held_out_fraction` share (whole groups, at least one when there
    are two or more groups, at most MAX_HELD_OUT_INSTANCES instances) is kept apart for accuracy checks; with a
    single group there is nothing to hold out and the check reuses it (`disjoint` False). Calibration groups
    are drawn from the rest by fresh seeded shuffles until `calib_size` groups exist, so small files still
    give varied mixtures.
    """
    if calib_size < 1:
        raise UserInputError(f"--calib-size must be >= 1 group, got {calib_size}")
    raw = read_calibration_file(path)
    image_bundle = np.dtype(manifest.data["inputs"][0]["dtype"]).kind == "f"
    if image_bundle != raw.is_image:
        wants = (
            "float (image) inputs: save them as images [M, *image shape] in an .npz" if image_bundle else "token ids"
        )
        raise UserInputError(
            f"{path} holds {'images' if raw.is_image else 'token instances'}, but this bundle takes {wants}"
        )
    n, seq_len = manifest.num_instances, manifest.seq_len
    instances = tokenize(raw.instances, manifest) if raw.is_text else raw.instances
    m = len(instances)
    if m < n:
        raise UserInputError(
            f"{path} has {m} instances, fewer than N={n} (one group); calibration needs realistic full groups, "
            f"so give at least {n} (hundreds are better)"
        )
    if image_bundle:  # the runtime's own image encoder: shape check, dtype, finite values
        from muxdeploy.runtimes.instances import InstanceEncoder

        encoded = InstanceEncoder(manifest).encode(instances)
    else:
        encoded = encode_token_instances(
            instances, seq_len, manifest.pad_token_id, manifest.vocab_size, filler=manifest.filler
        )
    if encoded.errors:
        first = min(encoded.errors)
        where = f"image {first}" if image_bundle else f"instance {first} (line {first + 1})"
        raise UserInputError(f"{path}: {where} {encoded.errors[first]}; fix or drop it")
    # task accuracy is checked for one label per instance; token-level labels are not scored here
    task = manifest.data.get("model", {}).get("task", "sequence_classification")
    per_instance = task in ("sequence_classification", "image_classification")
    labels = label_indices(raw.labels, manifest) if per_instance else None
    rng = np.random.default_rng(seed)
    order = rng.permutation(m)
    total_groups = m // n
    held_groups = 0
    if total_groups >= 2:
        held_groups = min(max(1, round(total_groups * held_out_fraction)), max(1, MAX_HELD_OUT_INSTANCES // n))
    held_idx, calib_idx = order[: held_groups * n], order[held_groups * n :]
    if held_groups == 0:
        held_idx = calib_idx = order
    filler = manifest.filler
    held = pack_groups(encoded.ids[held_idx], n, filler)
    held_labels = None
    if labels is not None:
        held_labels = pack_groups(labels[held_idx], n, np.int64(-1))
    passes = min(-(-calib_size * n // len(calib_idx)), 64)
    draws = [calib_idx] + [rng.permutation(calib_idx) for _ in range(passes - 1)]
    pool = np.concatenate(draws)[: calib_size * n]
    calib = pack_groups(encoded.ids[pool], n, filler)
    return CalibrationSet(
        calib_groups=calib,
        held_out_groups=held,
        held_out_labels=held_labels,
        held_out_instances=len(held_idx),
        num_instances_read=m,
        source=str(path),
        seed=seed,
        disjoint=held_groups > 0,
    )


def synthetic_set(manifest: Manifest, groups: int = 32, seed: int = 0) -> CalibrationSet:
    """Random-token groups (random lengths, padded as the runtime pads) for checks when no data file is given.

    Good enough for max abs diff and argmax agreement of FP16 vs FP32; never used to calibrate INT8.
    """
    n, seq_len, pad = manifest.num_instances, manifest.seq_len, manifest.pad_token_id
    vocab = manifest.vocab_size or 1000
    rng = np.random.default_rng(seed)
    spec = manifest.data["inputs"][0]
    if np.dtype(spec["dtype"]).kind == "f":  # image bundles: standard-normal pixels of the input shape
        shape = [int(d) for d in spec["shape"][1:]]
        packed = rng.standard_normal((groups, *shape)).astype(spec["dtype"])
        return CalibrationSet(packed[:0], packed, None, groups * n, groups * n, "synthetic random inputs", seed)
    lengths = rng.integers(1, seq_len + 1, size=groups * n)
    rows = [rng.integers(min(5, vocab - 1), vocab, size=int(k)) for k in lengths]
    encoded = encode_token_instances(rows, seq_len, pad, vocab, filler=manifest.filler)
    packed = pack_groups(encoded.ids, n, manifest.filler)
    return CalibrationSet(packed[:0], packed, None, groups * n, groups * n, "synthetic random tokens", seed)
