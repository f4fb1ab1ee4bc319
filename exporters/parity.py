"""Comparison against a reference: realistic parity inputs, the compare, and the parity checks built on them.

- `parity_inputs` / `instance_feeds`: token-id inputs padded as the runtime pads them.
- `Comparison`: a candidate's outputs against a reference's, batch by batch (max abs diff, argmax agreement).
- `evaluate`: a typed graph against the FP32 ONNX on held-out groups (build-engine's accuracy figures).
- `instance_parity`: the instance-batched graph against its grouped graph for every M.
The export's ONNX-vs-PyTorch check (exporters/onnx.py) folds its outputs into the same `Comparison`.
Every graph runs on onnxruntime CPU through the one session factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from muxdeploy.core.errors import MuxError
from muxdeploy.core.manifest import REFERENCE_ONNX
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import iter_batches, pack_groups, unpack_groups

if TYPE_CHECKING:
    from muxdeploy.calibration.data import CalibrationSet


class ParityError(MuxError):
    """A graph disagrees with its reference beyond the tolerance, or in output shape."""


class InstanceBatchParityError(ParityError):
    """The instance-batched graph disagrees with the grouped graph."""


def parity_inputs(
    config_vocab: int, pad_id: int, num_instances: int, seq_len: int, batch: int, seed: int = 0
) -> np.ndarray:
    """Realistic test groups: random ids of random lengths, padded as the runtime pads them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low=min(5, config_vocab - 1), high=config_vocab, size=(batch, num_instances, seq_len))
    lengths = rng.integers(1, seq_len + 1, size=(batch, num_instances))
    mask = np.arange(seq_len)[None, None, :] >= lengths[..., None]
    ids[mask] = pad_id
    return ids.astype(np.int32)


def instance_feeds(
    vocab: int, pad_id: int, n: int, seq_len: int, max_instances: int, seed: int = 0
) -> list[np.ndarray]:
    """[M, L] inputs for every M in 1..min(4N, max) and max: every remainder mod N, one and several groups."""
    sizes = sorted({*range(1, min(4 * n, max_instances) + 1), max_instances})
    flat = parity_inputs(vocab, pad_id, n, seq_len, -(-max_instances // n), seed=seed).reshape(-1, seq_len)
    return [flat[:m] for m in sizes]


@dataclass
class Comparison:
    """A candidate's outputs against a reference's, folded in batch by batch: max abs diff and argmax agreement.

    A batch whose shapes differ raises `error`, naming the sides `candidate_name` and `reference_name`
    (e.g. "ONNX output shape ... differs from PyTorch's ...").
    """

    candidate_name: str = "candidate"
    reference_name: str = "the reference's"
    error: type[MuxError] = ParityError
    max_abs_diff: float = 0.0
    agreeing: int = 0
    compared: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Fold in one batch (classes on the last axis, compared in float32); returns both sides' argmax."""
        if candidate.shape != reference.shape:
            raise self.error(
                f"{self.candidate_name} output shape {candidate.shape} differs from "
                f"{self.reference_name} {reference.shape}{where}"
            )
        ref, got = np.asarray(reference, dtype=np.float32), np.asarray(candidate, dtype=np.float32)
        if ref.size:
            self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(ref - got))))
        ref_cls, got_cls = ref.argmax(-1), got.argmax(-1)
        self.agreeing += int(np.sum(ref_cls == got_cls))
        self.compared += ref_cls.size
        return ref_cls, got_cls

    @property
    def argmax_agreement(self) -> float:
        """Share of argmax positions (instances, or tokens of token outputs) where both sides agree."""
        return self.agreeing / max(self.compared, 1)


def run_session(session: Any, feed: np.ndarray) -> np.ndarray:
    """The first output of an onnxruntime session fed `feed` as its first input."""
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def run_groups(session: Any, groups: np.ndarray, batch: int = 8) -> np.ndarray:
    """Outputs of `session` over [G, N, L] groups, run in batches of `batch` groups."""
    return np.concatenate([run_session(session, feed) for feed in iter_batches(groups, batch)]).astype(np.float32)


def evaluate(
    reference_onnx: str | Path,
    candidate_onnx: str | Path,
    calib: CalibrationSet,
    graph_opt: str = "all",
    batch: int = 8,
) -> dict[str, Any]:
    """Run both graphs on the held-out groups (onnxruntime CPU) and compare them over real instances only.

    Max abs diff, argmax agreement (per instance, or per token for token outputs) and, when the file had
    labels and the output is one class per instance, the task accuracy of both graphs. Streams batch by
    batch, so large outputs (retrieval heads over a vocabulary) never sit in memory whole. `graph_opt` is the
    candidate session's graph optimization level (bundles record it per artifact; new ones use "all").
    """
    ref_s, got_s = make_session(reference_onnx), make_session(candidate_onnx, graph_optimization=graph_opt)
    groups, labels = calib.held_out_groups, calib.held_out_labels
    real = (np.arange(groups.shape[0] * groups.shape[1]) < calib.held_out_instances).reshape(groups.shape[:2])
    comparison = Comparison()
    right_ref, right_got, counted = 0, 0, 0
    for start in range(0, groups.shape[0], batch):
        feed, keep = groups[start : start + batch], real[start : start + batch]
        ref_cls, got_cls = comparison.add(run_session(ref_s, feed)[keep], run_session(got_s, feed)[keep])
        if labels is not None and ref_cls.ndim == 1:
            lab = labels[start : start + batch][keep]
            right_ref += int(np.sum(ref_cls == lab))
            right_got += int(np.sum(got_cls == lab))
            counted += lab.size
    facts: dict[str, Any] = {
        "max_abs_diff": comparison.max_abs_diff,
        "argmax_agreement": comparison.argmax_agreement,
        "held_out_instances": int(calib.held_out_instances),
        "held_out_groups": int(groups.shape[0]),
        "held_out_disjoint": calib.disjoint,
        "reference": f"onnxruntime-cpu fp32 {REFERENCE_ONNX}",
    }
    if counted:
        facts["accuracy_fp32"] = right_ref / counted
        facts["accuracy"] = right_got / counted
    return facts


def instance_parity(
    instance_onnx: Path, grouped_onnx: Path, feeds: list[np.ndarray], n: int, filler: np.ndarray
) -> float:
    """Max abs difference between the instance-batched ONNX on [M, L] and the grouped ONNX on packed groups."""
    inst, grouped = make_session(instance_onnx), make_session(grouped_onnx)
    comparison = Comparison("instance-batched", "the grouped model's", InstanceBatchParityError)
    for rows in feeds:
        expected = unpack_groups(run_session(grouped, pack_groups(rows, n, filler)), rows.shape[0])
        comparison.add(expected, run_session(inst, rows), where=f" at M={rows.shape[0]}")
    return comparison.max_abs_diff
