"""Comparison against a reference: the compare folds batches; held-out figures match a direct computation;
token outputs compare per token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from precision_helpers import write_ids_jsonl

from muxdeploy.calibration.data import build_calibration_set, synthetic_set
from muxdeploy.calibration.fp16 import write_fp16
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.parity import Comparison, InstanceBatchParityError, ParityError, evaluate, run_groups
from muxdeploy.exporters.throughput import throughput
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import unpack_groups


def test_comparison_folds_batches() -> None:
    comparison = Comparison()
    ref = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
    ref_cls, got_cls = comparison.add(ref, ref + np.array([[0.0, 0.5], [0.0, 2.5]], np.float32))
    assert ref_cls.tolist() == [1, 0] and got_cls.tolist() == [1, 1]
    comparison.add(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float16))  # an empty batch changes nothing
    comparison.add(ref, ref)
    assert comparison.max_abs_diff == 2.5 and comparison.argmax_agreement == 0.75
    assert Comparison().argmax_agreement == 0.0
    named = Comparison("instance-batched", "the grouped model's", InstanceBatchParityError)
    with pytest.raises(ParityError, match=r"^instance-batched output shape \(1, 2\) differs from the grouped model's "):
        named.add(ref, ref[:1], where=" at M=1")
    with pytest.raises(InstanceBatchParityError, match=r"\(2, 2\) at M=1$"):
        named.add(ref, ref[:1], where=" at M=1")


def test_figures_match_direct_computation(tiny_bundle: Path, tmp_path: Path) -> None:
    cs = build_calibration_set(write_ids_jsonl(tmp_path / "c.jsonl", 30), Manifest.load(tiny_bundle), calib_size=2)
    assert cs.held_out_instances == 16  # 30 instances -> 7 full groups -> 4 held out, whole groups
    fp16 = write_fp16(tiny_bundle / "model.onnx", tmp_path / "m16.onnx")
    facts = evaluate(tiny_bundle / "model.onnx", fp16, cs, batch=3)
    ref = unpack_groups(run_groups(make_session(tiny_bundle / "model.onnx"), cs.held_out_groups), 16)
    got = unpack_groups(run_groups(make_session(fp16), cs.held_out_groups), 16)
    labels = unpack_groups(cs.held_out_labels, 16)
    assert facts["max_abs_diff"] == pytest.approx(float(np.abs(ref - got).max()))
    assert facts["accuracy_fp32"] == pytest.approx(float(np.mean(ref.argmax(-1) == labels)))
    assert facts["accuracy"] == pytest.approx(float(np.mean(got.argmax(-1) == labels)))


def test_token_outputs_compare_per_token(tmp_path: Path) -> None:
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    save_checkpoint(tmp_path / "t.pt", tiny_model(task="token_classification", num_labels=5))
    bundle = export_bundle(load_checkpoint(tmp_path / "t.pt").export_spec(), 4, tmp_path / "tok", max_batch=4).bundle
    lines = [json.dumps({"input_ids": [5, 6, 7], "label": [0, 1, 2]})] * 12  # token labels are not scored
    (tmp_path / "tok.jsonl").write_text("\n".join(lines))
    assert build_calibration_set(tmp_path / "tok.jsonl", Manifest.load(bundle), calib_size=2).held_out_labels is None
    cs = synthetic_set(Manifest.load(bundle), groups=3)
    fp16 = write_fp16(bundle / "model.onnx", tmp_path / "t16.onnx")
    facts = evaluate(bundle / "model.onnx", fp16, cs)
    assert facts["argmax_agreement"] > 0.9 and "accuracy" not in facts
    rates = throughput({"fp32": (bundle / "model.onnx", "all"), "fp16": (fp16, "all")}, cs.held_out_groups, 2, 1, 0.2)
    assert set(rates) == {"fp32", "fp16"} and min(rates.values()) > 0
