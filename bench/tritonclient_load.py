"""Loopback load test of `muxdeploy serve` with Triton's own clients: tritonclient.grpc and tritonclient.http.

One server (`--grpc-port` beside the HTTP port). For each protocol: REQUESTS single-instance V2 infer calls
(`input_ids` INT32 [1, L], binary tensors, as the clients send by default) from CLIENTS concurrent clients,
each its own connection (the asyncio clients `tritonclient.grpc.aio` / `tritonclient.http.aio`). The bundle is
the trained retrieval model, so every answer must be its own request's tokens (`wrong` counts the others).

    python bench/serve_load.py --make-bundle /tmp/retr          # trains + exports (~30 s)
    python bench/tritonclient_load.py --bundle /tmp/retr/mux_model --requests 20000 --clients 64 --json out.json

Traffic goes to 127.0.0.1 only; loops are bounded in count and time. Exit code 1 when any answer is wrong
or missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve_load import HOST, classify, finish_server, free_port, random_instances, start_server, timing, token_range

PROTOCOLS = ("grpc", "http")


async def run_protocol(
    protocol: str, url: str, instances: list[list[int]], seq_len: int, clients: int, time_limit: float = 600.0
) -> dict[str, Any]:
    """Send every instance once from `clients` concurrent tritonclient clients; check each answer."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as triton
    else:
        import tritonclient.http.aio as triton
    ids = np.zeros((len(instances), 1, seq_len), dtype=np.int32)
    for i, inst in enumerate(instances):
        ids[i, 0, : len(inst)] = inst
    next_index, answered = 0, 0
    counts = {"ok": 0, "token_slips": 0, "wrong": 0, "errors": 0}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    end_by = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal next_index, answered
        client = triton.InferenceServerClient(url)
        try:
            while next_index < len(instances) and time.monotonic() < end_by:
                i = next_index
                next_index += 1
                tensor = triton.InferInput("input_ids", [1, seq_len], "INT32")
                tensor.set_data_from_numpy(ids[i])
                t0 = time.perf_counter()
                try:
                    result = await client.infer("muxdeploy", [tensor])
                except Exception as exc:
                    counts["errors"] += 1
                    key = f"{type(exc).__name__}: {str(exc)[:80]}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)
                answered += 1
                want = instances[i]
                counts[classify(result.as_numpy("token_ids")[0, : len(want)].tolist(), want)] += 1
        finally:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "protocol": protocol,
        "client": f"tritonclient.{protocol}.aio",
        "requests": len(instances),
        "sent": next_index,
        "clients": clients,
        **counts,
        "error_examples": errors,
        **timing(latencies, answered, wall),
    }


def bench(bundle: Path, requests: int, clients: int, workers: int, extra: list[str], seed: int = 0) -> dict[str, Any]:
    """Both protocols against one server; returns the summary dict."""
    from muxdeploy.core.manifest import Manifest

    manifest = Manifest.load(bundle)
    if manifest.task != "retrieval":
        raise SystemExit(f"{bundle} is a {manifest.task} bundle; the load test needs a retrieval bundle")
    low, vocab = token_range(manifest)
    port, grpc_port = free_port(), free_port()
    proc = start_server(bundle, port, workers, ["--grpc-port", str(grpc_port), *extra])
    summary: dict[str, Any] = {"bundle": str(bundle), "workers": workers, "server_args": extra, "runs": []}
    try:
        for k, protocol in enumerate(PROTOCOLS):
            url = f"{HOST}:{grpc_port}" if protocol == "grpc" else f"{HOST}:{port}"
            instances = random_instances(requests, seed + k, manifest.seq_len, low, vocab)
            summary["runs"].append(asyncio.run(run_protocol(protocol, url, instances, manifest.seq_len, clients)))
    finally:
        summary["server"] = finish_server(proc)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="A retrieval bundle (bench/serve_load.py --make-bundle).")
    p.add_argument("--requests", type=int, default=20000, help="Requests per protocol.")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="muxdeploy serve --workers")
    p.add_argument("--server-arg", action="append", default=[], help="Extra `muxdeploy serve` argument (repeat).")
    p.add_argument("--json", type=Path, help="Also write the summary here.")
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    summary = bench(args.bundle, args.requests, args.clients, args.workers, args.server_arg)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = all(r["wrong"] == 0 and r["ok"] + r["token_slips"] == args.requests for r in summary["runs"])
    return 0 if ok and summary["server"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
