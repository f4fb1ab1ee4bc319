"""`muxdeploy tune` end to end on real tiny bundles (N=1 and N=4, FP32 and INT8, onnxruntime CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_model

from muxdeploy import api
from muxdeploy.checkpoint import save_checkpoint
from muxdeploy.cli import main

FAST = ["--seconds", "0.2", "--concurrency", "2", "--backend", "onnxruntime-cpu"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Bundles of one 3-label task at N=1 (fp32) and N=4 (fp32 + int8), and labelled data."""
    work = tmp_path_factory.mktemp("tune")
    rng = np.random.default_rng(0)
    data = work / "dev.jsonl"
    with data.open("w") as f:
        for _ in range(48):
            ids = rng.integers(5, 1000, size=int(rng.integers(3, 14))).tolist()
            f.write(json.dumps({"input_ids": ids, "label": int(rng.integers(0, 3))}) + "\n")
    out = []
    for n in (1, 4):
        ckpt = work / f"n{n}.pt"
        save_checkpoint(ckpt, tiny_model(num_instances=n), labels=["neg", "neutral", "pos"])
        api.export(ckpt, n, work / f"b{n}", max_batch=8)
        out.append(work / f"b{n}")
    api.build_engine(out[1], "int8", calib_data=data, calib_size=8, backend="onnxruntime", bench_seconds=0)
    return out[0], out[1], data


def test_tune_recommends_the_fastest_setting_within_budget(bundles: tuple[Path, Path, Path], tmp_path: Path) -> None:
    b1, b4, data = bundles
    out = tmp_path / "tune.json"
    args = ["tune", str(b1), str(b4), "--data", str(data), "--max-drop", "100", "--json", str(out), *FAST]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert sorted((r["n"], r["precision"]) for r in rows) == [(1, "fp32"), (4, "fp32"), (4, "int8")]
    assert report["baseline"]["n"] == 1 and report["baseline"]["precision"] == "fp32"
    assert report["baseline"]["drop_points"] == 0
    fastest = max(rows, key=lambda r: r["instances_per_s"])
    assert report["recommended"] == fastest
    assert f"recommended (*): N={fastest['n']} {fastest['precision']} onnxruntime-cpu" in result.output
    for r in rows:
        assert r["drop_points"] == pytest.approx((report["baseline"]["accuracy"] - r["accuracy"]) * 100)
        assert 0 <= r["flip_rate"] <= 1 and r["isolated_instances_per_s"] > 0 and r["p99_ms"] > 0
    # the accuracy is validate's deployed-side score on the same data
    int8 = next(r for r in rows if r["precision"] == "int8")
    (check,) = api.validate_all(b4, data, precisions=["int8"], backend="onnxruntime-cpu", reference=False)
    assert int8["accuracy"] == check.runtime["accuracy"]
    # no drop allowed: the fastest of the settings at least as accurate as the baseline (the baseline itself fits)
    tight_json = tmp_path / "tight.json"
    tight = ["tune", str(b1), str(b4), "--data", str(data), "--max-drop", "0", "--json", str(tight_json), *FAST]
    assert CliRunner().invoke(main, tight).exit_code == 0
    tight_report = json.loads(tight_json.read_text())
    fits = [r for r in tight_report["rows"] if r["drop_points"] <= 1e-9]
    assert tight_report["recommended"] == max(fits, key=lambda r: r["instances_per_s"])
    assert all(not r["fits"] and "drop" in r["why_not"] for r in tight_report["rows"] if r not in fits)


def test_tune_says_so_and_exits_1_when_nothing_fits(bundles: tuple[Path, Path, Path], tmp_path: Path) -> None:
    b1, b4, data = bundles
    out = tmp_path / "tune.json"
    args = ["tune", str(b1), str(b4), "--data", str(data), "--p99-ms", "0.0001", "--json", str(out), *FAST]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "error: no setting meets the budget (drop <= 2 points, p99 <= 0.0001 ms)" in result.output
    assert "relax --max-drop or --p99-ms" in result.output
    report = json.loads(out.read_text())
    assert report["recommended"] is None and all(not r["fits"] and "p99" in r["why_not"] for r in report["rows"])


def test_tune_refuses_bad_input(bundles: tuple[Path, Path, Path], tmp_path: Path) -> None:
    b1, _, data = bundles
    other = tmp_path / "other.pt"
    save_checkpoint(other, tiny_model(num_instances=2, num_labels=2), labels=["a", "b"])
    api.export(other, 2, tmp_path / "b2", max_batch=4)
    mixed = CliRunner().invoke(main, ["tune", str(b1), str(tmp_path / "b2"), "--data", str(data), *FAST])
    assert mixed.exit_code == 2 and "tune compares bundles of one task" in mixed.output
    negative = CliRunner().invoke(main, ["tune", str(b1), "--data", str(data), "--max-drop", "-1"])
    assert negative.exit_code == 2 and "--max-drop must be >= 0" in negative.output
    none = CliRunner().invoke(main, ["tune", "--data", str(data)])
    assert none.exit_code == 2
