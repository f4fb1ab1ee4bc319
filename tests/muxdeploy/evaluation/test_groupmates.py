"""Group-mate figures: the orders they pack in, and the figures against a direct computation on real bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from muxdeploy.evaluation.groupmates import label_mixed_order, mixed_group_share, random_orders
from muxdeploy.evaluation.validation import validate_all
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups

N, L = 4, 16


def test_label_mixed_order_puts_two_labels_in_every_group() -> None:
    gold = np.array([0] * 13 + [1] * 11)
    order = label_mixed_order(gold, 4, seed=0)
    assert sorted(order.tolist()) == list(range(24))  # a permutation
    groups = gold[order].reshape(-1, 4)
    assert (groups.min(axis=1) != groups.max(axis=1)).all()
    assert mixed_group_share(gold[order], 4) == 1.0
    assert mixed_group_share(np.sort(gold), 4) == pytest.approx(1 / 6)  # sorted: only the boundary group mixes
    three = np.array([0] * 20 + [1] * 3 + [2] * 3)
    share = mixed_group_share(three[label_mixed_order(three, 4, seed=1)], 4)
    assert share == pytest.approx(3 / 6)  # rare labels spread over as many groups as they can cover


def write_data(path: Path, count: int, seed: int = 1) -> tuple[list[list[int]], np.ndarray]:
    rng = np.random.default_rng(seed)
    instances = [rng.integers(5, 1000, size=int(rng.integers(2, 16))).tolist() for _ in range(count)]
    gold = rng.integers(0, 3, size=count)
    lines = [json.dumps({"input_ids": x, "label": int(y)}) + "\n" for x, y in zip(instances, gold, strict=True)]
    path.write_text("".join(lines))
    return instances, gold


def direct(session: ort.InferenceSession, rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Labels (original order) of rows packed in `order`, run straight on onnxruntime without the runtime."""
    groups = pack_groups(rows[order], N, default_filler(L, 0))
    out = unpack_groups(session.run(None, {"input_ids": groups})[0], len(order)).argmax(-1)
    pred = np.empty(len(order), dtype=np.int64)
    pred[order] = out
    return pred


def test_validate_reports_group_mates_equal_to_a_direct_computation(groupmate_bundle: Path, tmp_path: Path) -> None:
    tiny_bundle = groupmate_bundle
    instances, gold = write_data(tmp_path / "d.jsonl", 40)
    (report,) = validate_all(tiny_bundle, tmp_path / "d.jsonl", backend="onnxruntime-cpu", progress=False)
    g = report.groupmates
    assert g is not None and g.repackings == 5 and g.num_instances == N
    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = encode_token_instances(instances, L, 0, 1000).ids
    preds = np.stack([direct(session, rows, o) for o in random_orders(len(gold), 5, seed=0)])
    accuracies = (preds == gold).mean(axis=1)
    assert g.random_accuracy == pytest.approx(accuracies.mean())
    assert g.random_accuracy_min == pytest.approx(accuracies.min())
    assert g.flip_rate == pytest.approx((preds != preds[0]).any(axis=0).mean())
    assert g.flip_rate > 0  # random tiny weights: group-mates do move answers
    mixed = direct(session, rows, label_mixed_order(gold, N, seed=0))
    assert g.mixed_accuracy == pytest.approx((mixed == gold).mean())
    alone = np.array([direct(session, rows[i : i + 1], np.arange(1))[0] for i in range(len(gold))])
    assert g.isolated_accuracy == pytest.approx((alone == gold).mean())
    assert g.instances_per_s > g.isolated_instances_per_s > 0


def test_validate_without_precision_scores_every_artifact(tiny_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from muxdeploy import api
    from muxdeploy.cli import main

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    data = tmp_path / "d.jsonl"
    write_data(data, 48)
    api.build_engine(bundle, "int8", calib_data=data, calib_size=8, backend="onnxruntime", bench_seconds=0)
    result = CliRunner().invoke(main, ["validate", str(bundle), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)["reports"]
    assert [r["precision"] for r in reports] == ["fp32", "int8"]
    assert reports[1]["runtime_backend"].startswith("onnxruntime-cpu int8")
    assert reports[0]["reference"] == reports[1]["reference"]  # one PyTorch pass for both
    assert all(r["groupmates"]["repackings"] == 5 for r in reports)
    one = CliRunner().invoke(main, ["validate", str(bundle), "--data", str(data), "--precision", "int8", "--json"])
    assert json.loads(one.output)["runtime"] == reports[1]["runtime"]
    assert json.loads(one.output)["groupmates"]["flip_rate"] == reports[1]["groupmates"]["flip_rate"]
    text = CliRunner().invoke(main, ["validate", str(bundle), "--data", str(data)]).output
    assert text.count("group-mates (runtime; 5 random re-packings") == 2 and "onnxruntime-cpu int8" in text
    # without the PyTorch side (tune's way): the same deployed scores, no reference figures
    bare = api.validate_all(bundle, data, precisions=["int8"], reference=False)
    assert bare[0].runtime["accuracy"] == reports[1]["runtime"]["accuracy"]
    assert bare[0].agreement is None and bare[0].reference["accuracy"] is None
