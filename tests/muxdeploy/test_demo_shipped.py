"""`muxdeploy demo` on shipped-format models (tiny ones made here, laid out as muxdeploy/demo_models/ is): export,
INT8 build, validation, the table; its numbers equal `muxdeploy validate` on the same bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_model

from muxdeploy.checkpoint import save_model_dir
from muxdeploy.cli import main

WORDS = [f"w{i}" for i in range(200)]


def word_tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 4, **{w: 5 + i for i, w in enumerate(WORDS)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo_models/ folder: sentiment-n1/ and sentiment-n2/ (tiny, 2 labels) and sentiment-dev.jsonl."""
    root = tmp_path_factory.mktemp("demo_models")
    tokenizer = word_tokenizer_json()
    for n in (1, 2):
        model = tiny_model(seed=n, num_instances=n, num_labels=2)
        save_model_dir(root / f"sentiment-n{n}", model, tokenizer, ["negative", "positive"], {"note": "test"})
    rng = np.random.default_rng(0)
    with (root / "sentiment-dev.jsonl").open("w") as f:
        for _ in range(40):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
            f.write(json.dumps({"text": text, "label": int(rng.integers(0, 2))}) + "\n")
    return root


def test_demo_table_equals_validate(shipped: Path, tmp_path: Path) -> None:
    from muxdeploy.demo_shipped import run_shipped_demo

    models = {1: shipped / "sentiment-n1", 2: shipped / "sentiment-n2"}
    dev = shipped / "sentiment-dev.jsonl"
    report = run_shipped_demo(tmp_path / "w", models, dev, echo=lambda _: None, progress=False)
    assert [(r.n, r.precision) for r in report.rows] == [(1, "fp32"), (1, "int8"), (2, "fp32"), (2, "int8")]
    assert report.dev_size == 40 and "labels unused" in report.calibration  # no calibration file shipped here
    base = report.rows[0]
    assert base.drop_points == 0 and base.speedup == 1
    for row in report.rows:
        assert row.drop_points == pytest.approx((base.accuracy - row.accuracy) * 100)
        args = ["validate", row.bundle, "--data", str(dev), "--backend", "onnxruntime-cpu"]
        result = CliRunner().invoke(main, [*args, "--precision", row.precision, "--json"])
        assert result.exit_code == 0, result.output
        got = json.loads(result.output)
        assert got["runtime"]["accuracy"] == row.accuracy and got["reference"]["accuracy"] == row.pytorch_accuracy
        g = got["groupmates"]
        assert (g["random_accuracy"], g["mixed_accuracy"], g["flip_rate"], g["isolated_accuracy"]) == (
            row.random_packing_accuracy,
            row.label_mixed_accuracy,
            row.flip_rate,
            row.isolated_accuracy,
        )
        assert row.backend.startswith(f"onnxruntime-cpu {row.precision} (model.")
    assert "N=1 fp32" in report.to_dict()["baseline"] and len(report.to_dict()["rows"]) == 4
    table = report.table()
    assert "speed-up" in table and "flips" in table and "isolated" in table


def test_demo_command_on_the_shipped_layout(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import muxdeploy.shipped

    monkeypatch.setattr(muxdeploy.shipped, "SHIPPED_DIR", shipped)
    calib = shipped / "sentiment-calib.jsonl"
    calib.write_text("".join(json.dumps({"text": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(0, 60, 3)))
    try:
        out = tmp_path / "demo.json"
        result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    finally:
        calib.unlink()
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["n"], r["precision"]) for r in rows] == [(1, "fp32"), (1, "int8"), (2, "fp32"), (2, "int8")]
    assert {"n", "precision", "accuracy", "instances_per_s", "flip_rate", "label_mixed_accuracy"} <= set(rows[0])
    assert "INT8 calibrated on sentiment-calib.jsonl (training-split sentences" in result.output
    manifest = json.loads((tmp_path / "w" / "sentiment-n2" / "muxdeploy.json").read_text())
    assert manifest["calibration"]["source"].endswith("sentiment-calib.jsonl")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no PNG: matplotlib is not installed" in result.output
    else:
        assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_flags_of_the_train_path_need_train(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "w"), "--n", "4"])
    assert result.exit_code == 2 and "--n applies to `muxdeploy demo --train`" in result.output
