"""FP16 against FP32 on real sentences: a trained sentiment checkpoint through the product path.

The checkpoint is exported (`muxdeploy export`) and built to the fused FP16 onnxruntime graph (`muxdeploy
build-engine --fp16 --backend onnxruntime`); the held-out sentences then run through MuxRuntime twice: the FP32
graph on the CPU (the reference) and the FP16 fused graph on the fastest device here (CUDA when onnxruntime-gpu is
installed). Reports the max abs logit difference, argmax agreement and the accuracy of each.

    PYTHONPATH=. python bench/fp16_sentences.py --ckpt sent10.pt --data dev.jsonl      # JSONL: {"text", "label"}
    PYTHONPATH=. python bench/fp16_sentences.py --ckpt sent10.pt --write-dev dev.jsonl  # the demo's held-out split
Writes $OUT/fp16_sentences.json (bench/out/ when OUT is unset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_dev(path: Path) -> None:
    """The held-out split the demo and the trainer use (seeded shuffle of the VADER movie-review snippets)."""
    from muxdeploy.training import datasets

    _, dev = datasets.split_sentiment(seed=0)
    path.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in dev))
    print(f"wrote {len(dev)} sentences to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a sentiment checkpoint with its tokenizer (muxdeploy train)")
    p.add_argument("--data", help="JSONL with text and label per line")
    p.add_argument("--write-dev", help="write the demo's held-out split to this JSONL and stop")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/fp16_sentences.json)")
    args = p.parse_args(argv)
    if args.write_dev:
        write_dev(Path(args.write_dev))
        return 0
    from muxdeploy.build import BuildRequest, run_build
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.runtimes import MuxRuntime

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    texts, labels = [r["text"] for r in rows], np.asarray([int(r["label"]) for r in rows])
    ckpt = load_checkpoint(args.ckpt)
    n = ckpt.config.num_instances
    with tempfile.TemporaryDirectory(prefix="fp16-sentences-") as tmp:
        bundle = Path(tmp) / "mux_model"
        export = export_bundle(ckpt.export_spec(), n, bundle, max_batch=64)
        run_build(BuildRequest(bundle, precisions=["fp16"], backend="onnxruntime", bench_seconds=0), echo=print)
        with MuxRuntime(bundle, backend="onnxruntime-cpu", precision="fp32") as rt:
            fp32 = rt.predict_array(texts)
            fp32_name = rt.backend_name
        with MuxRuntime(bundle, precision="fp16") as rt:
            fp16 = rt.predict_array(texts)
            fp16_name = rt.backend_name
    report = {
        "checkpoint": str(args.ckpt),
        "n": n,
        "sentences": len(texts),
        "export_parity_vs_pytorch": export.max_abs_diff,
        "reference": fp32_name,
        "candidate": fp16_name,
        "max_abs_logit_diff": float(np.abs(fp16.astype(np.float64) - fp32).max()),
        "argmax_agreement": float((fp16.argmax(-1) == fp32.argmax(-1)).mean()),
        "accuracy_fp32": float((fp32.argmax(-1) == labels).mean()),
        "accuracy_fp16": float((fp16.argmax(-1) == labels).mean()),
    }
    print(json.dumps(report, indent=1))
    out = Path(args.out or Path(os.environ.get("OUT") or REPO / "bench" / "out") / "fp16_sentences.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
