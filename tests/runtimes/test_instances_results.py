"""Image instances and the per-task result formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import InstanceError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends.base import Backend, TensorSpec
from muxdeploy.runtimes.results import format_outputs, to_jsonable
from muxdeploy.runtimes.runtime import MuxRuntime


class ImageSumBackend(Backend):
    """[B, N, 1, 4, 4] float -> [B, N, 10]: slot's pixel sum in column 0 (identifies the image)."""

    name = "image-sum"

    def _activate_impl(self) -> None:
        pass

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        out = np.zeros((*feed.shape[:2], 10), np.float32)
        out[..., 0] = feed.reshape(*feed.shape[:2], -1).sum(-1)
        return out

    def _deactivate_impl(self) -> None:
        pass


@pytest.fixture
def image_bundle(tmp_path: Path) -> Path:
    data = {
        "schema": 1,
        "model": {"kind": "mlp", "task": "image_classification"},
        "num_instances": 3,
        "seq_len": 1,
        "max_batch": 4,
        "inputs": [{"name": "images", "dtype": "float32", "shape": ["B", 3, 1, 4, 4]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["B", 3, 10]}],
        "labels": [str(d) for d in range(10)],
        "artifacts": {},
    }
    (tmp_path / "muxdeploy.json").write_text(json.dumps(data))
    return tmp_path


def test_images_are_validated_packed_and_answered_in_order(image_bundle: Path) -> None:
    m = Manifest.load(image_bundle)
    spec_in, spec_out = TensorSpec.from_manifest(m.data["inputs"][0]), TensorSpec.from_manifest(m.data["outputs"][0])
    rng = np.random.default_rng(0)
    images = [rng.random((1, 4, 4)).astype(np.float32) for _ in range(7)]
    mixed = [images[0], images[1][0], np.ones((3, 3)), np.full((1, 4, 4), np.nan), images[2].tolist(), "x", *images[3:]]
    with MuxRuntime(image_bundle, backend=lambda: ImageSumBackend(spec_in, spec_out, 4)) as rt:
        out = rt.predict(mixed, on_error="return")
        stacked = rt.predict(np.stack(images))
        assert rt.submit(images[4]).result(5)["logits"][0] == pytest.approx(images[4].sum(), rel=1e-5)
    assert "shape (3, 3)" in str(out[2]) and "NaN" in str(out[3]) and isinstance(out[5], InstanceError)
    good = [r for r in out if not isinstance(r, InstanceError)]
    np.testing.assert_allclose([r["logits"][0] for r in good], [x.sum() for x in images], rtol=1e-5)
    np.testing.assert_allclose([r["logits"][0] for r in stacked], [x.sum() for x in images], rtol=1e-5)
    assert good[0]["label"] == "0" and good[0]["label_id"] == 0


def test_token_classification_is_cut_to_each_length() -> None:
    logits = np.zeros((2, 5, 3), np.float32)
    logits[0, :, 2] = 1
    logits[1, :, 1] = 1
    out = format_outputs("token_classification", logits, np.array([2, 9]), ["O", "B", "I"])
    assert out[0]["labels"] == ["I", "I"] and out[0]["label_ids"].tolist() == [2, 2]
    assert out[0]["logits"].shape == (2, 3) and out[1]["logits"].shape == (5, 3)  # 9 tokens were truncated to 5
    assert out[1]["labels"] == ["B"] * 5
    assert json.loads(json.dumps(to_jsonable(out[0]))) == {
        "labels": ["I", "I"],
        "label_ids": [2, 2],
        "logits": [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
    }


def test_retrieval_returns_argmax_ids_cut_to_length() -> None:
    logits = np.zeros((2, 4, 50), np.float32)
    for i, row in enumerate([[7, 8, 9, 10], [11, 12, 13, 14]]):
        logits[i, np.arange(4), row] = 1
    out = format_outputs("retrieval", logits, np.array([3, 1]), None)
    assert [r["token_ids"].tolist() for r in out] == [[7, 8, 9], [11]]
