"""FP16 conversion: I/O contract kept, runs on onnxruntime CPU, agrees with FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.data import synthetic_set
from calibration.evaluate import evaluate
from calibration.fp16 import io_types, write_fp16
from runtimes.errors import UserInputError
from runtimes.manifest import Manifest


def test_fp16_keeps_io_and_agrees(tiny_bundle: Path, tmp_path: Path) -> None:
    dst = write_fp16(tiny_bundle / "model.onnx", tmp_path / "model.fp16.onnx")
    model = onnx.load(str(dst))
    assert io_types(model) == {"input_ids": "INT32", "logits": "FLOAT"}
    inits = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    assert "FLOAT16" in inits  # the weights really are half precision
    ln_types = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ln_types and "Cast" in ln_types
    facts = evaluate(tiny_bundle / "model.onnx", dst, synthetic_set(Manifest.load(tiny_bundle), groups=8))
    assert facts["max_abs_diff"] < 1e-2 and facts["argmax_agreement"] >= 0.9
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_fp16_rejects_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        write_fp16(tmp_path / "none.onnx", tmp_path / "out.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(50, dtype=np.uint8).tobytes())
    with pytest.raises(UserInputError, match="not a readable ONNX"):
        write_fp16(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
