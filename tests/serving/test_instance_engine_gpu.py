"""GPU: the instance-batched TensorRT engine equals onnxruntime on the instance-batched ONNX for every M in 1..4N."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_instance_engine_every_m(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("muxdeploy.exporters.tensorrt")
    import onnxruntime as ort

    from muxdeploy.build import build_instance_engine
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.runtimes.backends.base import TensorSpec
    from muxdeploy.runtimes.backends.tensorrt import TensorRTBackend

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    name, entry = build_instance_engine(bundle, "fp32")
    assert entry["signature"] == "instances" and entry["max_instances"] == 32
    manifest = Manifest.load(bundle)
    n, seq_len = manifest.num_instances, manifest.seq_len
    session = ort.InferenceSession(str(bundle / "model.instance_batch.onnx"), providers=["CPUExecutionProvider"])
    backend = TensorRTBackend(
        bundle / name,
        TensorSpec("input_ids", np.dtype(np.int32), (seq_len,)),
        TensorSpec("logits", np.dtype(np.float32), (3,)),
        max_batch=entry["max_instances"],
        facts=entry,
    ).activate()
    rng = np.random.default_rng(0)
    pool = rng.integers(5, 1000, size=(4 * n, seq_len)).astype(np.int32)
    try:
        for m in range(1, 4 * n + 1):
            expected = session.run(None, {"input_ids": pool[:m]})[0]
            got = backend.infer(pool[:m])
            np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=f"M={m}")
    finally:
        backend.deactivate()
