"""The instance-batched export equals the grouped model for every M in 1..4N (onnxruntime, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import tiny_model

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.cli import main
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.instance_batch import make_instance_batch
from muxdeploy.exporters.onnx import export_bundle
from muxdeploy.runtimes.packing import pack_groups, unpack_groups

INSTANCE_BATCH_NAME = "model.instance_batch.onnx"  # the bundle contract


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_every_m(bundle: Path, filler: np.ndarray | None = None) -> None:
    manifest = Manifest.load(bundle)
    n, seq_len = manifest.num_instances, manifest.seq_len
    filler = manifest.filler if filler is None else filler
    inst, grouped = _session(bundle / INSTANCE_BATCH_NAME), _session(bundle / "model.onnx")
    rng = np.random.default_rng(7)
    pool = rng.integers(5, manifest.vocab_size, size=(4 * n, seq_len)).astype(np.int32)
    pool[:, rng.integers(1, seq_len) :] = manifest.pad_token_id
    for m in range(1, 4 * n + 1):
        rows = pool[:m]
        got = inst.run(None, {"input_ids": rows})[0]
        expected = unpack_groups(grouped.run(None, {"input_ids": pack_groups(rows, n, filler)})[0], m)
        assert got.shape == expected.shape, m
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"M={m}")
        # a different filler would give different answers: the graph really packs with the manifest's filler
    other = pack_groups(pool[:1], n, filler + 7)
    assert not np.allclose(
        unpack_groups(grouped.run(None, {"input_ids": other})[0], 1), inst.run(None, {"input_ids": pool[:1]})[0]
    )


def test_every_m_token_classification(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "tok.pt", tiny_model(task="token_classification", num_instances=3))
    out = tmp_path / "b"
    export_bundle(load_checkpoint(tmp_path / "tok.pt").export_spec(), 3, out, max_batch=4, instance_batch=True)
    assert Manifest.load(out).artifacts[INSTANCE_BATCH_NAME]["outputs"][0]["shape"] == ["M", 16, 3]
    _check_every_m(out)


def test_custom_filler(tiny_bundle: Path, tmp_path: Path) -> None:
    filler = np.arange(16, dtype=np.int32) + 9
    make_instance_batch(tiny_bundle / "model.onnx", tmp_path / INSTANCE_BATCH_NAME, 4, filler)
    (tmp_path / "model.onnx").write_bytes((tiny_bundle / "model.onnx").read_bytes())
    (tmp_path / "muxdeploy.json").write_text((tiny_bundle / "muxdeploy.json").read_text())
    _check_every_m(tmp_path, filler)


def test_wrong_grouped_shape_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"expected \[B, 5, L\]"):
        make_instance_batch(tiny_bundle / "model.onnx", tmp_path / "x.onnx", 5, np.zeros(16, np.int32))


def test_every_m_sequence_classification_via_cli(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main, ["export", str(tiny_ckpt), "--n", "4", "-o", str(out), "--max-batch", "4", "--instance-batch"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out / INSTANCE_BATCH_NAME}" in result.output
    facts = json.loads((out / "muxdeploy.json").read_text())["artifacts"][INSTANCE_BATCH_NAME]
    assert facts["signature"] == "instances" and facts["format"] == "onnx" and facts["max_instances"] == 16
    assert facts["inputs"][0]["shape"] == ["M", 16] and facts["outputs"][0]["shape"] == ["M", 3]
    assert facts["parity"]["max_abs_diff"] <= 1e-4 and facts["parity"]["sizes"] == 16
    _check_every_m(out)
