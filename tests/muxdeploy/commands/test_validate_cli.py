"""`muxdeploy validate` end to end on real bundles: numbers equal a direct computation on the same packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.cli import main
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups

LABELS = ["neg", "neutral", "pos"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", *args])
    return result.exit_code, result.output


def only_report(out: str) -> dict:
    """The one report of `validate --json` on a bundle holding one precision (fp32)."""
    reports = json.loads(out)["reports"]
    assert len(reports) == 1 and reports[0]["precision"] == "fp32"
    return reports[0]


def write_data(path: Path, count: int = 30, seed: int = 1) -> tuple[list[list[int]], list[int]]:
    rng = np.random.default_rng(seed)
    instances = [rng.integers(5, 1000, size=int(rng.integers(2, 24))).tolist() for _ in range(count)]
    gold = rng.integers(0, 3, size=count).tolist()
    with path.open("w") as f:
        for i, (ids, label) in enumerate(zip(instances, gold, strict=True)):
            f.write(json.dumps({"input_ids": ids, "label": LABELS[label] if i % 2 else label}) + "\n")
            if i == 10:
                f.write("\n")  # blank lines are skipped
    return instances, gold


def direct_predictions(instances: list[list[int]], run) -> np.ndarray:
    """Label ids from packing in file order into groups of N=4 and running `run` on [G, 4, 16]."""
    rows = encode_token_instances(instances, 16, 0, 1000).ids
    groups = pack_groups(rows, 4, default_filler(16, 0))
    return unpack_groups(run(groups), len(instances)).argmax(-1)


def test_validate_matches_direct_computation(tiny_bundle: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "dev.jsonl"
    instances, gold = write_data(data)
    code, out = invoke(str(tiny_bundle), "--data", str(data), "--json")
    assert code == 0, out
    report = only_report(out)
    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_pred = direct_predictions(instances, lambda g: session.run(None, {"input_ids": g})[0])
    model = load_checkpoint(tiny_ckpt).model
    with torch.no_grad():
        torch_pred = direct_predictions(instances, lambda g: model(torch.from_numpy(g)).numpy())
    gold_arr = np.array(gold)
    assert report["instances"] == 30 and report["checkpoint"] == str(tiny_ckpt)
    assert report["runtime"]["accuracy"] == pytest.approx(np.mean(onnx_pred == gold_arr))
    assert report["reference"]["accuracy"] == pytest.approx(np.mean(torch_pred == gold_arr))
    assert report["agreement"] == pytest.approx(np.mean(onnx_pred == torch_pred))
    assert report["max_abs_logit_diff"] < 1e-4
    for s, row in enumerate(report["slots"]):
        idx = np.arange(30) % 4 == s
        assert row["count"] == idx.sum()
        assert row["runtime"] == pytest.approx(np.mean(onnx_pred[idx] == gold_arr[idx]))

    code, text = invoke(str(tiny_bundle), "--data", str(data))
    assert code == 0, text
    assert "validated 30 instances" in text and "agreement:" in text
    assert f"   3{(np.arange(30) % 4 == 3).sum():>8}" in text  # per-slot row of slot 3


def test_validate_warns_when_data_is_sorted_by_label(tiny_bundle: Path, tmp_path: Path) -> None:
    """Label-sorted data packs label-pure groups, which inflates muxed accuracy: validate must say so."""
    instances, gold = write_data(tmp_path / "mixed.jsonl", count=40)
    code, out = invoke(str(tiny_bundle), "--data", str(tmp_path / "mixed.jsonl"))
    assert code == 0, out
    assert "sorted by label" not in out
    by_label = sorted(zip(gold, instances, strict=True), key=lambda pair: pair[0])
    sorted_path = tmp_path / "sorted.jsonl"
    sorted_path.write_text("".join(json.dumps({"input_ids": ids, "label": y}) + "\n" for y, ids in by_label))
    code, out = invoke(str(tiny_bundle), "--data", str(sorted_path))
    assert code == 0, out
    assert "warning: --data is sorted by label" in out and "shuffle the file" in out
    code, out = invoke(str(tiny_bundle), "--data", str(sorted_path), "--json")
    report = only_report(out)
    assert report["label_sorted"] is True and report["group_label_share"] > 0.9
    assert report["shuffled_label_share"] < 0.8


def test_validate_uses_the_given_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    """A different checkpoint of the same shape: the reference side must follow it (and disagree)."""
    from conftest import tiny_model

    other = tmp_path / "other.pt"
    save_checkpoint(other, tiny_model(seed=7), labels=LABELS)
    data = tmp_path / "dev.jsonl"
    instances, gold = write_data(data, count=40)
    code, out = invoke(str(tiny_bundle), "--data", str(data), "--checkpoint", str(other), "--json")
    assert code == 0, out
    report = only_report(out)
    model = load_checkpoint(other).model
    with torch.no_grad():
        pred = direct_predictions(instances, lambda g: model(torch.from_numpy(g)).numpy())
    assert report["reference"]["accuracy"] == pytest.approx(np.mean(pred == np.array(gold)))
    assert report["agreement"] < 1.0 and report["max_abs_logit_diff"] > 1e-3


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import tiny_model

    from muxdeploy.exporters.onnx import export_bundle

    root = tmp_path_factory.mktemp("token")
    ckpt = root / "ckpt.pt"
    save_checkpoint(
        ckpt, tiny_model(task="token_classification", num_labels=5), labels=["O", "B-a", "I-a", "B-b", "I-b"]
    )
    export_bundle(load_checkpoint(ckpt).export_spec(), 4, root / "mux_model", max_batch=8)
    return root / "mux_model", ckpt


def test_validate_token_classification_entity_f1(token_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, ckpt = token_bundle
    rng = np.random.default_rng(3)
    data = tmp_path / "ner.jsonl"
    with data.open("w") as f:
        for _ in range(12):
            n = int(rng.integers(3, 20))  # some longer than L=16: truncated, the tail is not scored
            labels = ["O", "B-a", "I-a", "B-b", "I-b"]
            tags = [labels[int(t)] for t in rng.integers(0, 5, size=n)]
            tags[0] = None
            f.write(json.dumps({"input_ids": rng.integers(5, 1000, size=n).tolist(), "labels": tags}) + "\n")
    code, out = invoke(str(bundle), "--data", str(data), "--json")
    assert code == 0, out
    report = only_report(out)
    assert report["metric"] == "entity_f1" and report["checkpoint"] == str(ckpt)
    assert 0.0 <= report["runtime"]["entity_f1"] <= 1.0
    assert report["runtime"]["token_accuracy"] == pytest.approx(report["reference"]["token_accuracy"])
    assert report["agreement"] == 1.0 and len(report["slots"]) == 4


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "data file not found"),
        ('{"input_ids": [5, 6], "label": "pos"}\n{"input_ids": [], "label": 1}\n', [], "line 2: instance is empty"),
        ('{"input_ids": [5, 6], "label": "maybe"}\n', [], "line 1: unknown label 'maybe'"),
        ('{"input_ids": [5, 6], "label": 1}\n', ["--limit", "0"], "--limit must be >= 1"),
        ('{"input_ids": [5, 6], "label": 1}\n', ["--checkpoint", "missing.pt"], "checkpoint not found"),
    ],
)
def test_validate_bad_input_is_one_line_exit_2(
    tiny_bundle: Path, tmp_path: Path, content: str | None, extra: list[str], message: str
) -> None:
    data = tmp_path / "dev.jsonl"
    if content is not None:
        data.write_text(content)
    code, out = invoke(str(tiny_bundle), "--data", str(data), *extra)
    assert code == 2, out
    assert out.startswith("error: ") and message in out and out.count("\n") == 1, out


def test_validate_missing_bundle_exit_2(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"input_ids": [5], "label": 0}\n')
    code, out = invoke(str(tmp_path / "nope"), "--data", str(tmp_path / "d.jsonl"))
    assert code == 2 and "bundle directory not found" in out
