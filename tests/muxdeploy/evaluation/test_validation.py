"""Validation: the per-slot comparison and the labelled-data reader, checked by hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.evaluation.labelled_data import LabelledData
from muxdeploy.evaluation.validation import SideResult, compare


def test_compare_classification_per_slot() -> None:
    data = LabelledData(instances=[[5]] * 6, gold=[0, 1, 1, 0, 1, 1], lines=list(range(1, 7)))
    rt = SideResult("runtime", [0, 1, 0, 0, 1, 0], [np.zeros(2, np.float32)] * 6)
    ref = SideResult("pytorch", [0, 1, 1, 0, 1, 0], [np.full(2, 0.5, np.float32)] * 6)
    out = compare(data, rt, ref, "sequence_classification", 3, ["a", "b"])
    assert out["runtime"]["accuracy"] == pytest.approx(4 / 6)
    assert out["reference"]["accuracy"] == pytest.approx(5 / 6)
    assert out["agreement"] == pytest.approx(5 / 6) and out["differing"] == 1
    assert out["max_abs_logit_diff"] == pytest.approx(0.5)
    # slot = index mod 3: slot 2 holds instances 2 and 5
    assert [s["count"] for s in out["slots"]] == [2, 2, 2]
    assert out["slots"][2]["runtime"] == 0.0 and out["slots"][2]["reference"] == 0.5
    assert out["slots"][0]["runtime"] == 1.0


def test_read_labelled_rejects_bad_lines(tmp_path, tiny_bundle) -> None:
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.evaluation.labelled_data import read_labelled

    manifest = Manifest.load(tiny_bundle)
    cases = {
        '{"input_ids": [5], "label": "nope"}': "line 1: unknown label 'nope'",
        '{"input_ids": [5]}': 'line 1: no "label"',
        '{"input_ids": [5], "label": 7}': "line 1: label id 7 is outside the bundle's 3 labels",
        '{"label": 1}': 'line 1: no "text", "input_ids" or "image" field',
        "[1, 2]": "line 1: expected a JSON object",
        "{oops": "line 1: not valid JSON",
    }
    for line, message in cases.items():
        path = tmp_path / "d.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_labelled(path, manifest)
