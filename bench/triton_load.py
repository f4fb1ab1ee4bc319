"""Loopback load on a real tritonserver (the nvidia-pytriton wheel, CPU) serving `export-triton` repositories.

Two public models from one bundle: `mux` (the Python-backend packer + grouped engine, one BLS request per
execute) and `mux_inst` (the instance-batched graph; the engine step is a Python-backend model running
onnxruntime, since the wheel has no onnxruntime backend). Single-instance V2 JSON requests from CLIENTS
keep-alive clients; every answer is checked against its own tokens (retrieval oracle, as serve_load.py).

    MUXDEPLOY_TRITON_VENV=/path/to/venv-with-pytriton \\
    python bench/triton_load.py --bundle /tmp/retr/mux_model --requests 5000 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_local
from serve_load import Client, random_instances

from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.triton import export_triton


async def run(port: int, model: str, instances: list[list[int]], clients: int, seq_len: int) -> dict[str, Any]:
    """Send every instance once (padded to L for the instance-batched model) and check its answer."""
    pad_to = seq_len if model.endswith("_inst") else None
    next_index, latencies = 0, []
    counts = {"ok": 0, "token_slips": 0, "wrong": 0, "http_error": 0}

    async def worker() -> None:
        nonlocal next_index
        client = Client(port)
        while next_index < len(instances):
            i = next_index
            next_index += 1
            row = instances[i] + [0] * (pad_to - len(instances[i])) if pad_to else instances[i]
            body = {"inputs": [{"name": "input_ids", "shape": [1, len(row)], "datatype": "INT32", "data": row}]}
            t0 = time.perf_counter()
            status, payload = await client.post(f"/v2/models/{model}/infer", json.dumps(body).encode())
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                counts["http_error"] += 1
                continue
            out = json.loads(payload)["outputs"][0]
            got = np.asarray(out["data"]).reshape(out["shape"])[0].argmax(-1)[: len(instances[i])].tolist()
            want = instances[i]
            diff = sum(a != b for a, b in zip(got, want, strict=True))
            counts["ok" if diff == 0 else "token_slips" if diff <= max(1, len(want) // 4) else "wrong"] += 1
        client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "model": model,
        "requests": len(instances),
        "clients": clients,
        **counts,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(instances) / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 99)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="A retrieval bundle (bench/serve_load.py --make-bundle).")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if triton_local.problem():
        raise SystemExit(triton_local.problem())
    site_packages, venv = triton_local.find_pytriton()  # type: ignore[misc]
    manifest = Manifest.load(args.bundle)
    cfg = manifest.data["model"]["config"]
    low = max(0, 1, 2, *cfg.get("mux_slot_ids", [0])) + 1
    instances = random_instances(args.requests, 0, manifest.seq_len, low, manifest.vocab_size or 64)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
        work = Path(tmp)
        common = {
            "engine_backend": "python-onnxruntime",
            "python_env": venv,
            "max_queue_delay_us": args.max_queue_delay_us,
        }
        export_triton(args.bundle, work / "packer", name="mux", packer="python", **common)
        export_triton(args.bundle, work / "inst", name="mux_inst", **common)
        server = triton_local.LocalTritonServer(site_packages, [work / "packer", work / "inst"], work)
        try:
            for model in ("mux_engine", "mux", "mux_inst"):
                status, body = server.load(model)
                if status != 200:
                    raise SystemExit(f"loading {model} failed: {body}")
            for model, engine in (("mux", "mux_engine"), ("mux_inst", "mux_inst")):
                results[model] = asyncio.run(run(server.http_port, model, instances, args.clients, manifest.seq_len))
                _, stats = triton_local.http_json("GET", f"{server.url}/v2/models/{engine}/stats")
                results[model]["engine_execution_count"] = stats["model_stats"][0]["execution_count"]
        finally:
            server.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(r["wrong"] == 0 and r["http_error"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
