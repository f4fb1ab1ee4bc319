"""The export form computes the model's function from the model's weights, in a graph without shape arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from conftest import tiny_model

from muxdeploy.exporters.onnx import export_onnx
from muxdeploy.exporters.parity import parity_inputs
from muxdeploy.models.export_form import BertStyleLayer, ExportForm, SlotInputStage


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"demuxing_variant": "mlp"},
        {"muxing_variant": "binary_hadamard", "binary_hadamard_epsilon": 0.2},
        {"muxing_variant": "random_ortho"},
        {"task": "token_classification", "num_labels": 5},
        {"task": "retrieval"},
        {"embedding_style": "bert"},
        {"num_instances": 1},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "index-hadamard",
)
def test_export_form_matches_model(overrides: dict[str, Any]) -> None:
    """In float64, so that only algebra (not float32 rounding, which chaotic random weights amplify) can differ."""
    model = tiny_model(seed=3, **overrides).double()
    with torch.no_grad():  # larger weights than init_weights' 0.02, so that a wrong term would show
        for p in model.parameters():
            p.mul_(10.0)
    form = model.for_export().eval()
    n = model.config.num_instances
    ids = torch.from_numpy(parity_inputs(model.config.vocab_size, model.config.pad_token_id, n, 16, 3, seed=1))
    with torch.no_grad():
        expected, got = model(ids), form(ids)
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 1e-2
    assert float((got - expected).abs().max()) <= 1e-9 * scale


def test_hadamard_models_take_the_slot_input_stage() -> None:
    assert isinstance(ExportForm(tiny_model()).slot_stage, SlotInputStage)
    assert ExportForm(tiny_model(muxing_variant="random_ortho")).slot_stage is None
    form = ExportForm(tiny_model())
    assert all(isinstance(layer, BertStyleLayer) for layer in form.encoder.layers)


def test_exported_graph_has_no_shape_arithmetic(tmp_path: Path) -> None:
    """No Shape/Expand: onnxruntime would run them on the CPU, and such a graph cannot be one CUDA graph."""
    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_onnx(model.for_export().eval(), path, 4, 16, 8, 18)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Expand", "Size"}, ops
    assert "ReduceMean" not in ops  # the mean over N is the per-slot LayerNorm weights plus a sum
