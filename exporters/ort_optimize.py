"""onnxruntime's transformer graph optimizer (attention, LayerNorm, GELU fusion) into a separate ORT-only artifact.

The fused graph uses com.microsoft contrib ops, which only onnxruntime runs; it is written beside the
TensorRT-bound ONNX (never over it) and recorded in the manifest with role "ort-optimized".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from muxdeploy.calibration.fp16 import DEFAULT_KEEP_FP32_OPS, FP16_MAX, drop_duplicate_nodes
from muxdeploy.core.onnx_io import check_io_kept, load_onnx, save_onnx_atomic
from muxdeploy.exporters.ort_fusions import (
    fuse_broadcast_skip_layer_norm,
    fuse_embed_layer_norm,
    move_attention_scale,
    sum_slot_outputs,
    transpose_matmul_weights,
)

ORT_DOMAIN = "com.microsoft"


def contrib_ops(model: Any) -> list[str]:
    """Op types from onnxruntime's com.microsoft domain in a graph (empty for a portable graph)."""
    return sorted({n.op_type for n in model.graph.node if n.domain == ORT_DOMAIN})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer prints advice on stdout and logs at WARNING; keep the CLI output to what we report."""
    names = ("onnxruntime.transformers", "fusion_base", "onnx_model", "optimizer")
    loggers = [logging.getLogger(n) for n in names] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _working_dir(path: str | Path) -> Iterator[None]:
    """Run the block in `path` (Python 3.10 has no contextlib.chdir); relative paths inside resolve there."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def optimize_for_ort(
    fp32_onnx: str | Path,
    typed_onnx: str | Path | None,
    dst: str | Path,
    precision: str,
    num_heads: int,
    hidden_size: int,
    keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS,
    attention: str = "Attention",
    embed: str = "EmbedLayerNormalization",
    transposed_weights: bool = False,
    gelu: str = "exact",
) -> dict[str, Any]:
    """Write onnxruntime's fused graph for `precision` to `dst` (atomic); returns fusion facts.

    fp32: fuse model.onnx. fp16: fuse the FP32 graph, then convert to FP16 (fusion patterns match FP32
    graphs, not the Cast-laden FP16 one). int8: fuse the Q/DQ graph (fusions stop at Q/DQ pairs).
    `attention`: the fused op, "Attention" (one packed QKV projection) or "MultiHeadAttention" (three
    projections; onnxruntime picks other attention kernels for it on some GPUs). `embed`: the op each mux slot's
    embedding LayerNorm becomes (`ort_fusions.EMBED_FORMS`). `transposed_weights`: constant-weight MatMuls as
    FusedMatMul(transB) (`ort_fusions.transpose_matmul_weights`). `gelu`: "exact" keeps the erf GELU (BiasGelu);
    "tanh" swaps in the tanh approximation (FastGelu), the GELU cuBLASLt's epilogue (and so PyTorch's CUDA fast
    path) computes. The defaults are the measured choice.
    """
    if gelu not in ("exact", "tanh"):
        raise ValueError(f"gelu must be exact or tanh, got {gelu!r}")
    if attention not in ("Attention", "MultiHeadAttention"):
        raise ValueError(f"attention must be Attention or MultiHeadAttention, got {attention!r}")
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source = Path(typed_onnx) if precision == "int8" and typed_onnx else Path(fp32_onnx)
    reference = load_onnx(source)
    graph = onnx.ModelProto()
    graph.CopyFrom(reference)
    # our own rewrites first (muxdeploy.exporters.ort_fusions), so onnxruntime's fuser sees BERT's attention form
    ours = {
        f"{embed} (mux slots)": fuse_embed_layer_norm(graph, embed),
        "Sum": sum_slot_outputs(graph),
        "SkipLayerNormalization (second embedding pass)": fuse_broadcast_skip_layer_norm(graph),
        "attention scale moved after QK": move_attention_scale(graph),
    }
    options = FusionOptions("bert")
    # QOrderedMatMul (matched on ModelOpt's Q/DQ pattern) has only a CUDA kernel: keep the graph runnable on CPU
    options.enable_qordered_matmul = False
    options.use_multi_head_attention = attention == "MultiHeadAttention"
    options.enable_gelu_approximation = gelu == "tanh"
    with _quiet(), tempfile.TemporaryDirectory(prefix="muxdeploy-ort-") as tmp, _working_dir(tmp):
        # (in the scratch directory: onnxruntime's symbolic shape inference drops sym_shape_infer_temp.onnx and
        # its external data into the working directory whenever it cannot infer every shape)
        rewritten = Path(tmp) / "rewritten.onnx"  # a path, not a ModelProto: optimize_model would spill
        onnx.save(graph, str(rewritten))  # initializers to external data, which its shape inference cannot read
        optimized = optimize_model(
            str(rewritten),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            use_gpu=False,
        )
        if transposed_weights:
            ours["FusedMatMul (transB)"] = transpose_matmul_weights(optimized.model)
        if precision == "fp16":
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

            optimized.convert_float_to_float16(
                keep_io_types=True, max_finite_val=FP16_MAX, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_ops]
            )
            drop_duplicate_nodes(optimized.model)  # onnxruntime < 1.32's converter repeats shared-weight Casts
            optimized.topological_sort()
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    stats.update({k: v for k, v in ours.items() if v})
    check_io_kept(reference, optimized.model, "onnxruntime transformer optimizer")
    save_onnx_atomic(optimized.model, dst)
    return {
        "optimizer": "muxdeploy.exporters.ort_fusions + onnxruntime.transformers.optimize_model(model_type=bert)",
        "fused": stats,
        "contrib_ops": contrib_ops(optimized.model),
        "source_onnx": source.name,
    }
