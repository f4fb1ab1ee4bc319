"""The packer: instances -> fixed-length rows -> N-slot groups -> batches, and back. numpy only, vectorized.

One code path serves the runtime, calibration, training and validation, so a model always sees
instances exactly as it will in deployment.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from muxdeploy.core.errors import InstanceError

# MuxRuntime(isolation=...): who may share an N-slot group with an instance
#   none:    whoever comes next (FIFO over all callers: the fastest)
#   request: only instances of the same request (a predict()/submit_many() call, or submit()s sharing a
#            request_key); the rest of the group holds fillers
#   fillers: nobody; every instance gets a group of its own, the other N-1 slots hold the fixed filler
ISOLATION_MODES = ("none", "request", "fillers")


@dataclass
class EncodedInstances:
    """Instances as rows of a [M, L] int32 matrix, their true lengths, and the ones that were refused.

    `ids[i]` is meaningful only when i is not in `errors`; refused rows hold the filler.
    """

    ids: np.ndarray
    lengths: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    def raise_first_error(self) -> None:
        """Raise InstanceError for the first refused instance, if any."""
        if self.errors:
            index = min(self.errors)
            raise InstanceError(f"instance {index}: {self.errors[index]}")


def encode_token_instances(
    instances: Sequence[Any] | np.ndarray,
    seq_len: int,
    pad_id: int,
    vocab_size: int | None = None,
    strict: bool = False,
    filler: np.ndarray | None = None,
    copy: bool = True,
) -> EncodedInstances:
    """Validate token-id instances and lay them into a [M, seq_len] int32 matrix, padded with `pad_id`.

    Longer instances are truncated to `seq_len` (or refused when `strict`). Each instance is
    judged on its own: a bad one is recorded in `errors` and never affects the others.
    `copy=False`: a valid C-contiguous int32 [M, seq_len] matrix is returned as is, not copied (for callers that
    finish with the rows before they return and never write into them).
    """
    m = len(instances)
    if isinstance(instances, np.ndarray) and instances.ndim == 2 and instances.dtype.kind in "iu" and m:
        fast = _encode_id_matrix(instances, seq_len, pad_id, vocab_size, strict, copy)
        if fast is not None:
            return fast
    out = np.full((m, seq_len), pad_id, dtype=np.int32)
    if m == 0:
        return EncodedInstances(out, np.zeros(0, dtype=np.int64))
    if isinstance(instances, np.ndarray) and instances.ndim == 2:
        lengths = np.full(m, instances.shape[1], dtype=np.int64)
        flat, dtype_ok = instances.reshape(-1), instances.dtype.kind in "iu"
    else:
        try:
            lengths = np.fromiter(map(len, instances), dtype=np.int64, count=m)
            flat = np.array(list(itertools.chain.from_iterable(instances)))
            dtype_ok = flat.ndim == 1 and (flat.dtype.kind in "iu" or (flat.size == 0 and lengths.sum() == 0))
        except (TypeError, ValueError):
            dtype_ok = False
    if not dtype_ok:
        return _encode_one_by_one(instances, seq_len, pad_id, vocab_size, strict, filler)
    errors = _range_errors(flat, lengths, vocab_size)
    if strict:
        for i in np.flatnonzero(lengths > seq_len):
            errors.setdefault(int(i), f"has {lengths[i]} tokens, more than the model's length {seq_len} (strict=True)")
    for i in np.flatnonzero(lengths == 0):
        errors.setdefault(int(i), "is empty; an instance needs at least one token")
    kept = np.minimum(lengths, seq_len)
    if (lengths > seq_len).any():  # drop the tokens past seq_len (position within its instance >= seq_len)
        starts = np.cumsum(lengths) - lengths
        flat = flat[np.arange(flat.size) - np.repeat(starts, lengths) < seq_len]
    # row-major boolean scatter: row i takes the next kept[i] tokens, the rest stay pad
    out[np.arange(seq_len) < kept[:, None]] = flat
    if errors and filler is not None:
        out[list(errors)] = filler
    return EncodedInstances(out, lengths, errors)


def _encode_id_matrix(
    ids: np.ndarray, seq_len: int, pad_id: int, vocab_size: int | None, strict: bool, copy: bool = True
) -> EncodedInstances | None:
    """The fast path for an [M, W] integer matrix whose every id is valid: one reduction and one copy (none
    with `copy=False` where the matrix already is C-contiguous int32 [M, seq_len]).

    Returns None when some instance needs an error (an id out of range, too long under `strict`, width 0);
    the general path then names each bad instance.
    """
    m, width = ids.shape
    if width == 0 or (strict and width > seq_len):
        return None
    signed, bits = ids.dtype.kind == "i", 8 * ids.dtype.itemsize
    if vocab_size is not None and ids.dtype.isnative and (not signed or vocab_size <= 2 ** (bits - 1)):
        # one reduction: read as unsigned, every negative id is >= 2**(bits-1) >= vocab_size
        if ids.view(np.dtype(f"u{ids.dtype.itemsize}")).max() >= vocab_size:
            return None
    elif (signed and ids.min() < 0) or (vocab_size is not None and ids.max() >= vocab_size):
        return None
    kept = min(width, seq_len)
    if not copy and width == seq_len and ids.dtype == np.int32 and ids.flags["C_CONTIGUOUS"]:
        out = ids
    elif kept == seq_len:
        out = ids[:, :seq_len].astype(np.int32)  # a copy: the caller's array is not aliased
    else:
        out = np.full((m, seq_len), pad_id, dtype=np.int32)
        out[:, :kept] = ids
    return EncodedInstances(out, np.full(m, width, dtype=np.int64))


def _range_errors(flat: np.ndarray, lengths: np.ndarray, vocab_size: int | None) -> dict[int, str]:
    """Instances holding ids below 0 or >= vocab_size."""
    bad = flat < 0
    if vocab_size is not None:
        bad |= flat >= vocab_size
    if not bad.any():
        return {}
    owner = np.repeat(np.arange(len(lengths)), lengths)
    errors: dict[int, str] = {}
    for pos in np.flatnonzero(bad):
        i = int(owner[pos])
        if i not in errors:
            errors[i] = f"token id {int(flat[pos])} is outside the vocabulary [0, {vocab_size})"
    return errors


def _encode_one_by_one(
    instances: Sequence[Any],
    seq_len: int,
    pad_id: int,
    vocab_size: int | None,
    strict: bool,
    filler: np.ndarray | None,
) -> EncodedInstances:
    """Slow path for mixed input: find which instances are malformed, encode the rest."""
    good: list[int] = []
    errors: dict[int, str] = {}
    for i, inst in enumerate(instances):
        reason = _type_error(inst)
        if reason:
            errors[i] = reason
        else:
            good.append(i)
    sub = encode_token_instances([np.asarray(instances[i]) for i in good], seq_len, pad_id, vocab_size, strict)
    out = np.full((len(instances), seq_len), pad_id, dtype=np.int32)
    if filler is not None and errors:
        out[list(errors)] = filler
    lengths = np.zeros(len(instances), dtype=np.int64)
    if good:
        out[good] = sub.ids
        lengths[good] = sub.lengths
    for j, reason in sub.errors.items():
        errors[good[j]] = reason
        if filler is not None:
            out[good[j]] = filler
    return EncodedInstances(out, lengths, errors)


def _type_error(inst: Any) -> str | None:
    if isinstance(inst, (str, bytes)):
        return "is text, but this call takes token ids (use a bundle with a tokenizer, or tokenize first)"
    try:
        arr = np.asarray(inst)
    except (TypeError, ValueError):
        return f"is a {type(inst).__name__}, not a sequence of token ids"
    if arr.ndim != 1:
        return f"has shape {arr.shape}; a token-id instance is one flat sequence of ints"
    if arr.size and arr.dtype.kind not in "iu":
        return f"has dtype {arr.dtype}; token ids must be integers"
    return None


def num_groups(m: int, n: int) -> int:
    """Groups needed for m instances at N=n."""
    return -(-m // n)


def pack_groups(rows: np.ndarray, n: int, filler: np.ndarray) -> np.ndarray:
    """[M, ...] instances -> [G, N, ...] groups in order; the last group's empty slots hold `filler`."""
    m = rows.shape[0]
    g = num_groups(m, n)
    pad = g * n - m
    if pad:
        fill = np.broadcast_to(np.asarray(filler, dtype=rows.dtype), (pad, *rows.shape[1:]))
        rows = np.concatenate([rows, fill], axis=0)
    return rows.reshape(g, n, *rows.shape[1:])


def unpack_groups(outputs: np.ndarray, m: int) -> np.ndarray:
    """[G, N, ...] outputs -> [M, ...]: output i belongs to instance i; filler slots are dropped."""
    return outputs.reshape(-1, *outputs.shape[2:])[:m]


def iter_batches(groups: np.ndarray, max_batch: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most max_batch groups."""
    for start in range(0, groups.shape[0], max_batch):
        yield groups[start : start + max_batch]


def default_filler(seq_len: int, pad_id: int) -> np.ndarray:
    """The filler instance for empty slots: a row of pad tokens."""
    return np.full(seq_len, pad_id, dtype=np.int32)


def pack_isolated(rows: np.ndarray, n: int, filler: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[M, ...] instances -> ([G, N, ...] groups, slot positions [M]) where no group mixes two runs of owners.

    Each maximal run of equal consecutive `owners` starts a fresh group and fills as many groups as it needs;
    empty slots hold `filler`. Row i sits at flat slot `positions[i]` (group positions[i] // N, slot
    positions[i] % N); positions increase with i, so a batch of consecutive groups holds consecutive rows.
    `owners = arange(M)` gives every instance a group of its own (slot 0, the other N-1 slots fillers).
    """
    m = rows.shape[0]
    owners = np.asarray(owners)
    if owners.shape != (m,):
        raise ValueError(f"owners must have one entry per row ({m}), got shape {owners.shape}")
    if m == 0:
        return rows.reshape(0, n, *rows.shape[1:]), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])  # first row of each run
    sizes = np.diff(np.r_[starts, m])
    run = np.repeat(np.arange(starts.size), sizes)
    within = np.arange(m) - starts[run]
    first_group = np.cumsum(-(-sizes // n)) - (-(-sizes // n))  # groups before each run
    positions = (first_group[run] + within // n) * n + within % n
    total = int(first_group[-1] + -(-sizes[-1] // n))
    flat = np.empty((total * n, *rows.shape[1:]), dtype=rows.dtype)
    flat[...] = np.asarray(filler, dtype=rows.dtype)
    flat[positions] = rows
    return flat.reshape(total, n, *rows.shape[1:]), positions
