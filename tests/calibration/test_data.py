"""Calibration data: reading, tokenizing, packing with the runtime's packer, splitting, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from precision_helpers import add_word_tokenizer, copy_bundle, write_ids_jsonl

from muxdeploy.calibration.data import GroupFeedReader, build_calibration_set, synthetic_set
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.packing import encode_token_instances


def test_jsonl_ids_pack_into_seeded_groups(tiny_bundle: Path, tmp_path: Path) -> None:
    m = Manifest.load(tiny_bundle)
    f = write_ids_jsonl(tmp_path / "c.jsonl", 40)
    cs = build_calibration_set(f, m, calib_size=12, seed=3)
    assert cs.calib_groups.shape == (12, 4, 16) and cs.calib_groups.dtype == np.int32
    assert cs.held_out_groups.shape == (5, 4, 16) and cs.held_out_instances == 20 and cs.disjoint
    again = build_calibration_set(f, m, calib_size=12, seed=3)
    assert np.array_equal(cs.calib_groups, again.calib_groups)
    other = build_calibration_set(f, m, calib_size=12, seed=4)
    assert not np.array_equal(cs.calib_groups, other.calib_groups)
    # every held-out row is one of the file's instances, encoded exactly as the runtime's packer encodes it
    rows = [json.loads(line)["input_ids"] for line in f.read_text().splitlines()]
    encoded = encode_token_instances(rows, 16, 0).ids
    held = cs.held_out_groups.reshape(-1, 16)
    index = {r.tobytes(): i for i, r in enumerate(encoded)}
    owners = [index[r.tobytes()] for r in held]
    assert len(set(owners)) == 20
    labels = [json.loads(line)["label"] for line in f.read_text().splitlines()]
    assert cs.held_out_labels.reshape(-1).tolist() == [labels[i] for i in owners]
    # calibration groups never contain held-out instances
    calib_rows = {r.tobytes() for r in cs.calib_groups.reshape(-1, 16)}
    assert not calib_rows & {r.tobytes() for r in held}


def test_text_uses_the_bundle_tokenizer(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    add_word_tokenizer(bundle, ["good", "bad", "movie", "plot"])
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"text": t, "label": "pos"}) for t in ["good movie", "bad plot", "movie"] * 4))
    cs = build_calibration_set(f, Manifest.load(bundle), calib_size=2)
    first = {tuple(r[r != 0]) for r in cs.held_out_groups.reshape(-1, 16)}
    assert first <= {(5, 7), (6, 8), (7,)}
    assert set(cs.held_out_labels.reshape(-1).tolist()) == {2}  # "pos" is label 2 of the tiny bundle


def test_npz_input(tiny_bundle: Path, tmp_path: Path) -> None:
    ids = np.random.default_rng(0).integers(5, 1000, size=(9, 20))
    np.savez(tmp_path / "c.npz", input_ids=ids, labels=np.arange(9) % 3)
    cs = build_calibration_set(tmp_path / "c.npz", Manifest.load(tiny_bundle), calib_size=3)
    assert cs.calib_groups.shape == (3, 4, 16)
    assert cs.held_out_labels.shape == (1, 4)


def test_reader_protocol() -> None:
    groups = np.zeros((5, 4, 16), dtype=np.int32)
    reader = GroupFeedReader(groups, batch=2)
    shapes = []
    while (feed := reader.get_next()) is not None:
        shapes.append(feed["input_ids"].shape)
    assert shapes == [(2, 4, 16), (2, 4, 16), (1, 4, 16)]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["input_ids"].dtype == np.int32


def test_synthetic_set(tiny_bundle: Path) -> None:
    cs = synthetic_set(Manifest.load(tiny_bundle), groups=3)
    assert cs.held_out_groups.shape == (3, 4, 16) and cs.held_out_labels is None


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ('{"input_ids": [1, 2]}\n{not json\n', "line 2: not valid JSON"),
        ("[1, 2, 3]\n", "line 1: is a list"),
        ('{"tokens": [1, 2]}\n', 'line 1: has no usable "text" or "input_ids"'),
        ('{"input_ids": [1, "a"]}\n', "line 1"),
        ('{"input_ids": [5, 6]}\n{"text": "hi"}\n', "mixes"),
        ('{"input_ids": [5, 6]}\n' * 3, "fewer than N=4"),
        ('{"input_ids": [5, 6], "label": "nope"}\n' * 4, "label 'nope'"),
        ('{"input_ids": [5, 99999]}\n' * 4, "outside the vocabulary"),
        ('{"text": "hello"}\n' * 4, "has no tokenizer.json"),
    ],
)
def test_bad_files_are_one_line_errors(tiny_bundle: Path, tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserInputError) as err:
        build_calibration_set(f, Manifest.load(tiny_bundle))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_bad_npz(tiny_bundle: Path, tmp_path: Path) -> None:
    m = Manifest.load(tiny_bundle)
    with pytest.raises(UserInputError, match="not found"):
        build_calibration_set(tmp_path / "nope.jsonl", m)
    np.savez(tmp_path / "x.npz", other=np.zeros(3))
    with pytest.raises(UserInputError, match="no 'input_ids'"):
        build_calibration_set(tmp_path / "x.npz", m)
    np.savez(tmp_path / "y.npz", input_ids=np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(UserInputError, match="2-D integer"):
        build_calibration_set(tmp_path / "y.npz", m)


def test_float_input_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "img")
    data = json.loads((bundle / "muxdeploy.json").read_text())
    data["inputs"] = [{"name": "pixels", "dtype": "float32", "shape": ["B", 4, 1, 8, 8]}]
    (bundle / "muxdeploy.json").write_text(json.dumps(data))
    m = Manifest.load(bundle)
    cs = synthetic_set(m, groups=2)
    assert cs.held_out_groups.shape == (2, 4, 1, 8, 8) and cs.held_out_groups.dtype == np.float32
    with pytest.raises(UserInputError, match="float \\(image\\) inputs"):
        build_calibration_set(write_ids_jsonl(tmp_path / "c.jsonl", 8), m)
