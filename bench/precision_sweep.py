"""Precision sweep behind docs/PRECISION.md: INT8 variants and FP16 choices, measured against the FP32 ONNX.

    python bench/precision_sweep.py BUNDLE CALIB.jsonl [--calib-size 512] > sweep.jsonl

Prints one JSON line per variant (max abs diff, argmax agreement, task accuracy vs FP32 on held-out groups):
  int8 quantized op set (MatMul/Gemm, or onnxruntime's full QDQ op set) x regions kept in float (none, mux,
  demux, both); calibration methods x calibration sizes; FP16 with different op types kept in FP32.
Each quantizer run happens in its own process (muxdeploy.calibration.int8).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

from muxdeploy.calibration.data import build_calibration_set
from muxdeploy.calibration.fp16 import convert_fp16
from muxdeploy.calibration.int8 import quantize_int8
from muxdeploy.core.manifest import REFERENCE_ONNX, Manifest
from muxdeploy.core.onnx_io import load_onnx, save_onnx_atomic
from muxdeploy.exporters.parity import evaluate

FLOAT_REGIONS = ((), ("mux",), ("demux",), ("mux", "demux"))
OP_SETS = {"matmul-gemm": ("MatMul", "Gemm"), "ort-all-qdq-ops": ()}
FP16_KEEP = ((), ("LayerNormalization",), ("LayerNormalization", "Softmax"))


def _row(kind: str, facts: dict, **what: object) -> str:
    keep = {k: round(v, 5) for k, v in facts.items() if isinstance(v, float)}
    return json.dumps({"kind": kind, **what, **keep})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("calib")
    ap.add_argument("--calib-size", type=int, default=512)
    args = ap.parse_args()
    bundle = Path(args.bundle)
    fp32 = bundle / REFERENCE_ONNX
    manifest = Manifest.load(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "candidate.onnx"
        cs = build_calibration_set(args.calib, manifest, calib_size=args.calib_size)
        for op_name, ops in OP_SETS.items():
            for regions in FLOAT_REGIONS:
                quantize_int8(fp32, out, cs.calib_groups, method="max", exclude=regions, op_types=ops)
                print(_row("int8", evaluate(fp32, out, cs), ops=op_name, float_regions=list(regions)), flush=True)
        for size in (64, args.calib_size):
            sized = build_calibration_set(args.calib, manifest, calib_size=size)
            for method in ("max", "percentile", "entropy"):
                quantize_int8(fp32, out, sized.calib_groups, method=method)
                print(_row("int8", evaluate(fp32, out, sized), calib_size=size, method=method), flush=True)
        reference = load_onnx(fp32)
        for keep in FP16_KEEP:
            save_onnx_atomic(convert_fp16(copy.deepcopy(reference), keep), out)
            print(_row("fp16", evaluate(fp32, out, cs), keep_fp32=list(keep)), flush=True)


if __name__ == "__main__":
    main()
