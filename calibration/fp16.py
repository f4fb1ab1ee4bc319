"""FP32 ONNX -> mixed FP16 ONNX with the graph's I/O types kept (int32 input_ids in, float32 logits out).

Uses onnxruntime's maintained float16 converter (`onnxruntime.transformers.float16`, the successor of
onnxconverter-common's): keep_io_types=True, max_finite_val=65504 (the default 1e4 clamp of older
onnxconverter-common breaks masks built from float32 min), and LayerNormalization kept in FP32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from muxdeploy.core.onnx_io import check_io_kept, load_onnx, save_onnx_atomic

FP16_MAX = 65504.0
DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = ("LayerNormalization",)


def drop_duplicate_nodes(model: Any) -> int:
    """Remove nodes identical to an earlier one (same op, inputs, outputs, attributes); returns how many.

    onnxruntime < 1.32's converter inserts one `<w>_cast_to_fp32` Cast per blocked consumer of an
    initializer that other ops use in FP16 (torch 2.11's exporter shares equal initializers, e.g. the
    LayerNorm weights of an untrained model), which breaks SSA form. The copies are the same Cast.
    """
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        kept.append(node)
    removed = len(model.graph.node) - len(kept)
    if removed:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return removed


def convert_fp16(model: Any, keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS) -> Any:
    """An FP16 copy of an FP32 ModelProto: I/O types kept, `keep_fp32_ops` op types left in FP32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        max_finite_val=FP16_MAX,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_ops],
    )
    drop_duplicate_nodes(converted)
    # the converter appends its Cast nodes at the end; TensorRT's parser and the ONNX checker need node order
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    return wrapped.model


def write_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS) -> Path:
    """Convert the FP32 ONNX at `src` to FP16 at `dst` (atomic); the I/O contract is checked first."""
    import copy

    reference = load_onnx(src)
    converted = convert_fp16(copy.deepcopy(reference), keep_fp32_ops)
    check_io_kept(reference, converted, "FP16 conversion")
    save_onnx_atomic(converted, dst)
    return Path(dst)
