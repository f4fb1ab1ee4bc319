"""FP8 (E4M3 Q/DQ) accuracy against FP32, beside INT8 and FP16, on a bundle's held-out groups (docs/PRECISION.md).

    python bench/fp8_accuracy.py BUNDLE [CALIB] [--dataset sentiment|mnist] [--calib-size 512] [--out fp8.json]

CALIB is a calibration file as `build-engine --calib-data` takes it (JSONL with "text"/"input_ids" and "label",
or .npz with "images" and "labels"). Without it, `--dataset` writes the held-out split of the registry data the
bundle was trained on (sentiment: the dev 10 % of the VADER snippets; mnist: the 1,000 test digits) and uses that.
Each precision's graph is made exactly as `build-engine` makes it (calibration/fp8.py, int8.py, fp16.py, the same
packed calibration groups, mux/demux in float) and compared with model.onnx on onnxruntime CPU (FP8 Q/DQ runs
there: onnxruntime has CPU kernels for float8 QuantizeLinear/DequantizeLinear). Writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from muxdeploy.calibration.data import build_calibration_set
from muxdeploy.calibration.fp8 import quantize_fp8
from muxdeploy.calibration.fp16 import write_fp16
from muxdeploy.calibration.int8 import DEFAULT_OP_TYPES, VISION_OP_TYPES, quantize_int8
from muxdeploy.core.manifest import REFERENCE_ONNX, Manifest
from muxdeploy.exporters.parity import evaluate


def write_dataset(name: str, path: Path) -> Path:
    """The held-out split of the registry data (`sentiment` JSONL or `mnist` .npz) at `path`; returns the file."""
    if name == "sentiment":
        from muxdeploy.training.datasets import split_sentiment

        _, dev = split_sentiment()
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in dev))
        return path
    from muxdeploy.training.vision import load_mnist_split

    split = load_mnist_split()
    path = path.with_suffix(".npz")
    np.savez(path, images=split.test_x.astype(np.float32), labels=split.test_y)
    return path


def measure(bundle: Path, calib: Path, calib_size: int) -> dict:
    """FP16, INT8 and FP8 graphs of the bundle vs its FP32 ONNX, as build-engine makes and measures them."""
    import onnxruntime

    manifest = Manifest.load(bundle)
    fp32 = bundle / REFERENCE_ONNX
    checks = build_calibration_set(calib, manifest, calib_size=calib_size)
    ops = VISION_OP_TYPES if manifest.model_kind == "vision" else DEFAULT_OP_TYPES
    result: dict = {
        "bundle": str(bundle),
        "calib": str(calib),
        "num_instances": manifest.num_instances,
        "calibration_groups": int(checks.calib_groups.shape[0]),
        "onnxruntime": onnxruntime.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp16", "int8", "fp8"):
            out = Path(tmp) / f"model.{precision}.onnx"
            start = time.perf_counter()
            if precision == "fp16":
                write_fp16(fp32, out)
                how: dict = {}
            elif precision == "int8":
                how = quantize_int8(fp32, out, checks.calib_groups, op_types=ops, input_name=manifest.input_name)
            else:
                how = quantize_fp8(fp32, out, checks.calib_groups, op_types=ops, input_name=manifest.input_name)
            made = time.perf_counter() - start
            facts = evaluate(fp32, out, checks)
            result["precisions"][precision] = {
                **{k: v for k, v in facts.items() if isinstance(v, (int, float, str, bool))},
                "seconds_to_make": round(made, 1),
                **{k: how[k] for k in ("quantizer", "calib_method", "activations", "weights") if k in how},
            }
            print(precision, json.dumps(result["precisions"][precision]), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("calib", type=Path, nargs="?")
    ap.add_argument("--dataset", choices=("sentiment", "mnist"), help="write the held-out registry split as CALIB")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("fp8_accuracy.json"))
    args = ap.parse_args()
    calib = args.calib
    if calib is None:
        if args.dataset is None:
            ap.error("give CALIB or --dataset")
        calib = write_dataset(args.dataset, args.out.with_name(args.out.stem + f".{args.dataset}"))
    result = measure(args.bundle, calib, args.calib_size)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
