"""onnxruntime CPU throughput of a bundle's graphs, interleaved in one process (docs/PRECISION.md speed table).

    python bench/precision_speed.py BUNDLE [--graph LABEL=PATH ...] [--seconds 10] [--threads 1] [--batch 8]

Times every ONNX artifact of the bundle (model.onnx, model.fp16.onnx, model.int8.onnx, their .ort.onnx
fused graphs) plus any --graph given, on random-token groups, and prints instances/s as one JSON line.
Graphs take turns for 5 rounds; the best round counts, so other load on the machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from muxdeploy.calibration.data import synthetic_set
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.throughput import throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--graph", action="append", default=[], help="extra LABEL=PATH to time")
    ap.add_argument("--seconds", type=float, default=10.0, help="total seconds per graph")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="groups per batch")
    args = ap.parse_args()
    manifest = Manifest.load(args.bundle)
    graphs: dict[str, tuple[str | Path, str]] = {}
    for name in manifest.artifacts_where(format="onnx"):
        # FP16 graphs fused by onnxruntime's optimizer crash its CPU session at the default level
        level = manifest.artifacts[name].get("session_graph_optimization_level", "all")
        graphs[name] = (manifest.artifact_path(name), level)
    for item in args.graph:
        label, _, path = item.partition("=")
        graphs[label] = (path, "extended" if path.endswith(".fp16.ort.onnx") else "all")
    groups = synthetic_set(manifest, groups=64).held_out_groups
    rates = throughput(graphs, groups, args.batch, args.threads, seconds=args.seconds)
    print(json.dumps({"threads": args.threads, "batch": args.batch, **{k: round(v) for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
