"""onnxruntime's transformer graph optimizer (attention, LayerNorm, GELU fusion) into a separate ORT-only artifact.

The fused graph uses com.microsoft contrib ops, which only onnxruntime runs; it is written beside the
TensorRT-bound ONNX (never over it) and recorded in the manifest with role "ort-optimized".
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from muxdeploy.calibration.fp16 import DEFAULT_KEEP_FP32_OPS, FP16_MAX

from muxdeploy.core.onnx_io import check_io_kept, load_onnx, save_onnx_atomic

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


def optimize_for_ort(
    fp32_onnx: str | Path,
    typed_onnx: str | Path | None,
    dst: str | Path,
    precision: str,
    num_heads: int,
    hidden_size: int,
    keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS,
) -> dict[str, Any]:
    """Write onnxruntime's fused graph for `precision` to `dst` (atomic); returns fusion facts.

    fp32: fuse model.onnx. fp16: fuse the FP32 graph, then convert to FP16 (fusion patterns match FP32
    graphs, not the Cast-laden FP16 one). int8: fuse the Q/DQ graph (fusions stop at Q/DQ pairs).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source = Path(typed_onnx) if precision == "int8" and typed_onnx else Path(fp32_onnx)
    reference = load_onnx(source)
    options = FusionOptions("bert")
    # QOrderedMatMul (matched on ModelOpt's Q/DQ pattern) has only a CUDA kernel: keep the graph runnable on CPU
    options.enable_qordered_matmul = False
    with _quiet():
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            use_gpu=False,
        )
        if precision == "fp16":
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

            optimized.convert_float_to_float16(
                keep_io_types=True, max_finite_val=FP16_MAX, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_ops]
            )
            optimized.topological_sort()
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    check_io_kept(reference, optimized.model, "onnxruntime transformer optimizer")
    save_onnx_atomic(optimized.model, dst)
    return {
        "optimizer": "onnxruntime.transformers.optimize_model(model_type=bert)",
        "fused": stats,
        "contrib_ops": contrib_ops(optimized.model),
        "source_onnx": source.name,
    }
