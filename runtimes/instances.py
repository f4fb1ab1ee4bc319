"""Instances -> validated fixed-size rows: token ids, texts (the bundle's tokenizer.json) or images.

Token ids go through the one packer (`muxdeploy.runtimes.packing.encode_token_instances`); texts are
tokenized with `tokenizers` (imported lazily) and then take the same path; images are float
arrays of the model's per-instance shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import InstanceError, UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends.base import import_optional
from muxdeploy.runtimes.packing import EncodedInstances, encode_token_instances


def load_tokenizer(path: Path, seq_len: int, strict: bool) -> Any:
    """A `tokenizers.Tokenizer` from tokenizer.json: no padding (the packer pads), truncation to `seq_len`
    unless strict (then over-long texts are refused by the packer). Special tokens stay as trained:
    the post-processor's [CLS] text [SEP]."""
    tokenizers = import_optional("tokenizers", "pip install tokenizers")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception on malformed files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"{path} is not a valid tokenizer.json ({first}); re-export the bundle") from None
    tok.no_padding()
    if strict:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length=seq_len)
    return tok


class InstanceEncoder:
    """Turns a bundle's instances into rows of the model input (one row = one slot of a group)."""

    def __init__(self, manifest: Manifest, strict: bool = False) -> None:
        self.manifest = manifest
        self.strict = strict
        spec = manifest.data["inputs"][0]
        self.dtype = np.dtype(spec["dtype"])
        self.row_shape = tuple(int(d) for d in spec["shape"][2:])
        self.is_image = self.dtype.kind == "f"
        self.seq_len = manifest.seq_len
        self.pad_id = manifest.pad_token_id
        self.vocab_size = manifest.vocab_size
        self.filler = self._filler()
        self._tokenizer: Any = None

    def _filler(self) -> np.ndarray:
        if "filler" in self.manifest.data:
            filler = np.asarray(self.manifest.data["filler"], dtype=self.dtype)
        else:
            filler = np.zeros(self.row_shape, dtype=self.dtype)
        if filler.shape != self.row_shape:
            raise UserInputError(f"manifest filler has shape {filler.shape}, a slot is {self.row_shape}; re-export")
        return filler

    @property
    def tokenizer(self) -> Any:
        """The bundle's tokenizer (loaded on first use), or None when the bundle has none."""
        if self._tokenizer is None:
            path = self.manifest.tokenizer_file
            if path is None:
                return None
            if not path.is_file():
                raise UserInputError(f"the manifest names tokenizer {path}, which is missing; re-export the bundle")
            self._tokenizer = load_tokenizer(path, self.seq_len, self.strict)
        return self._tokenizer

    def encode(self, instances: Sequence[Any] | np.ndarray, copy: bool = True) -> EncodedInstances:
        """Rows [M, *slot shape], true lengths (tokens; 1 for images) and per-instance errors.

        `copy=False` lets a valid int32 id matrix of the model's length through without a copy (rows then alias
        the caller's array: for synchronous callers that never write into them).
        """
        if self.is_image:
            return self._encode_images(instances)
        if not isinstance(instances, np.ndarray) and len(instances) and isinstance(instances[0], str):
            instances = self._tokenize_texts(instances)
        enc = self._encode_ids(instances, copy)
        texts = not isinstance(instances, np.ndarray) and any(isinstance(instances[i], str) for i in enc.errors)
        if enc.errors and texts:
            enc = self._encode_ids(self._tokenize_texts(instances))
        return enc

    def _encode_ids(self, instances: Sequence[Any] | np.ndarray, copy: bool = True) -> EncodedInstances:
        return encode_token_instances(
            instances, self.seq_len, self.pad_id, self.vocab_size, self.strict, self.filler, copy
        )

    def encode_one(self, instance: Any) -> tuple[np.ndarray, int]:
        """(row, length) of one instance, or InstanceError naming what is wrong with it."""
        enc = self.encode([instance])
        if enc.errors:
            raise InstanceError(f"instance {enc.errors[0]}")
        return enc.ids[0], int(enc.lengths[0])

    def _tokenize_texts(self, instances: Sequence[Any]) -> list[Any]:
        """Replace every str by its token ids (batch-encoded); other items are kept for the packer to judge."""
        where = [i for i, x in enumerate(instances) if isinstance(x, str)]
        tok = self.tokenizer
        if tok is None:
            return list(instances)  # the packer refuses text with a clear message
        out = list(instances)
        for i, enc in zip(where, tok.encode_batch([instances[i] for i in where]), strict=True):
            out[i] = enc.ids if enc.ids else []
        return out

    def _encode_images(self, instances: Sequence[Any] | np.ndarray) -> EncodedInstances:
        m = len(instances)
        rows = np.empty((m, *self.row_shape), dtype=self.dtype)
        errors: dict[int, str] = {}
        whole = isinstance(instances, np.ndarray) and instances.shape[1:] == self.row_shape
        if whole and instances.dtype.kind in "fiu":
            rows[:] = instances
            bad = ~np.isfinite(rows.reshape(m, -1)).all(axis=1)
            errors = {int(i): "has NaN or infinite values" for i in np.flatnonzero(bad)}
        else:
            for i, inst in enumerate(instances):
                row, reason = self._image_row(inst)
                if reason:
                    errors[i] = reason
                else:
                    rows[i] = row
        for i in errors:
            rows[i] = self.filler
        return EncodedInstances(rows, np.ones(m, dtype=np.int64), errors)

    def _image_row(self, inst: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            arr = np.asarray(inst)
        except (TypeError, ValueError):
            return None, f"is a {type(inst).__name__}, not an array of shape {self.row_shape}"
        if arr.dtype.kind not in "fiu":
            return None, f"has dtype {arr.dtype}; an image must be numeric"
        if arr.shape != self.row_shape:
            squeezed = [d for d in arr.shape if d != 1] == [d for d in self.row_shape if d != 1]
            if not squeezed or arr.size != int(np.prod(self.row_shape)):
                return None, f"has shape {arr.shape}; this model takes images of shape {self.row_shape}"
            arr = arr.reshape(self.row_shape)
        if not np.isfinite(arr).all():
            return None, "has NaN or infinite values"
        return arr.astype(self.dtype, copy=False), None
