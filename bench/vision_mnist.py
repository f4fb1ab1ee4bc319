"""MNIST accuracy of vision DataMUX at several N: PyTorch vs the exported ONNX on onnxruntime (CPU).

    PYTHONPATH=$PWD python bench/vision_mnist.py --n 1 2 4 --epochs 40 --out bench/out/vision [--int8]
Trains on 4,000 of the 5,000 registry digits, tests on the other 1,000 (packed in order, zero-image fillers).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.core.manifest import REFERENCE_ONNX, Manifest, onnx_name
from muxdeploy.exporters.onnx import export_bundle
from muxdeploy.models.vision import VisionConfig
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import iter_batches, pack_groups, unpack_groups
from muxdeploy.training.vision import MNIST_LABELS, accuracy, load_mnist_split, predict_vision, train_vision


def onnx_scores(bundle: Path, images: np.ndarray, graph: str = REFERENCE_ONNX) -> np.ndarray:
    """Run the bundle's `graph` on images packed exactly as the runtime packs them."""
    m = Manifest.load(bundle)
    sess = make_session(bundle / graph)
    groups = pack_groups(images, m.num_instances, m.filler)
    outs = [sess.run(None, {m.input_name: b})[0] for b in iter_batches(groups, m.max_batch)]
    return unpack_groups(np.concatenate(outs), len(images))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--transform", default="nonlinear_expand")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--out", default="bench/out/vision")
    ap.add_argument("--int8", action="store_true", help="also build-engine --int8 (onnxruntime), calibrated on train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = load_mnist_split()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        "| N | arch/transform | epochs | PyTorch acc | ONNX (onnxruntime) acc | export max abs diff | train s |"
        + (" INT8 ONNX acc |" if args.int8 else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.int8 else ""))
    for n in args.n:
        t0 = time.time()
        cfg = VisionConfig(num_instances=n, arch=args.arch, transform=args.transform)
        model = train_vision(cfg, split.train_x, split.train_y, epochs=args.epochs, batch_size=16, lr=1e-3)
        secs = time.time() - t0
        ckpt = out / f"mnist_n{n}.pt"
        save_checkpoint(ckpt, model, labels=MNIST_LABELS)
        res = export_bundle(load_checkpoint(ckpt).export_spec(), n, out / f"bundle_n{n}", max_batch=64)
        acc_pt = accuracy(predict_vision(model, split.test_x), split.test_y)
        acc_ort = accuracy(onnx_scores(res.bundle, split.test_x), split.test_y)
        int8_cell = ""
        if args.int8:  # calibrated on 1,000 training digits, scored on the held-out test digits
            from click.testing import CliRunner

            from muxdeploy.cli import main as cli

            calib = out / f"calib_n{n}.npz"
            np.savez(calib, images=split.train_x[:1000], labels=split.train_y[:1000])
            flags = ["--int8", "--calib-data", str(calib), "--backend", "onnxruntime", "--bench-seconds", "0"]
            built = CliRunner().invoke(cli, ["build-engine", str(res.bundle), *flags])
            if built.exit_code != 0:
                raise SystemExit(built.output)
            int8_cell = f" {accuracy(onnx_scores(res.bundle, split.test_x, onnx_name('int8')), split.test_y):.4f} |"
        print(
            f"| {n} | {args.arch}/{args.transform} | {args.epochs} | {acc_pt:.4f} | {acc_ort:.4f} | "
            f"{res.max_abs_diff:.1e} | {secs:.0f} |{int8_cell}",
            flush=True,
        )


if __name__ == "__main__":
    main()
