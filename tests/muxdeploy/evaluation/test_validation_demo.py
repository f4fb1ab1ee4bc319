"""`muxdeploy validate` reports the same numbers as `muxdeploy demo` for the same model and held-out data.

Skips until the demo (branch train) is present; needs the VADER data (skips when its registry is
unreachable, fails under CI=true, like the data tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture
def vader_dev() -> list[tuple[str, int]]:
    from muxdeploy.training.datasets import FetchError, split_sentiment

    try:
        return split_sentiment(seed=0)[1]
    except FetchError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"registry unreachable under CI: {exc}")
        pytest.skip(f"registry unreachable: {exc}")


def test_validate_matches_demo(tmp_path: Path, vader_dev: list[tuple[str, int]]) -> None:
    demo = pytest.importorskip("muxdeploy.demo", reason="muxdeploy demo is not on this branch yet")
    from muxdeploy.evaluation.validation import validate

    limit = 80
    report = demo.run_demo(tmp_path / "w", 4, steps=4, limit=limit, echo=lambda _: None, progress=False)
    dev = vader_dev[: max(1, limit // 4)]  # the demo's held-out sentences, in its order
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in dev))
    got = validate(report.paths["bundle"], data, report.paths["checkpoint"], backend="onnxruntime-cpu", progress=False)
    assert got.count == report.dev_size == len(dev)
    assert got.runtime["accuracy"] == pytest.approx(report.onnx_accuracy)
    assert got.reference["accuracy"] == pytest.approx(report.torch_accuracy)
    assert got.agreement == pytest.approx(report.agreement)
