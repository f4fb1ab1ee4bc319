"""Loopback load test of the Ray Serve deployment (`muxdeploy.serving.ray.mux_app`) through Ray's HTTP proxy.

A local Ray (127.0.0.1 only), Serve's proxy on a free port, the deployment with REPLICAS replicas; then the
same load as bench/serve_load.py: REQUESTS single-instance `POST {"input_ids": [...]}` requests from CLIENTS
concurrent keep-alive clients, every answer checked against its own tokens (retrieval oracle).

    python bench/serve_load.py --make-bundle /tmp/retr          # trains + exports (~30 s)
    python bench/ray_load.py --bundle /tmp/retr/mux_model --replicas 1 2 --requests 20000 --clients 64

Bounded in count and time; exit code 1 when any answer is wrong or missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from serve_load import HOST, free_port, random_instances, run_load, token_range


def bench(
    bundle: Path, replicas: list[int], requests: int, clients: int, mode: str, batch_wait_s: float, seed: int = 0
) -> dict[str, Any]:
    """One run per replica count on one local Ray; returns the summary dict."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve

    from muxdeploy.core.manifest import Manifest
    from muxdeploy.serving.ray import mux_app

    manifest = Manifest.load(bundle)
    low, vocab = token_range(manifest)
    port = free_port()
    ray.init(include_dashboard=False, _node_ip_address=HOST, log_to_driver=False)
    serve.start(http_options={"host": HOST, "port": port})
    summary: dict[str, Any] = {"bundle": str(bundle), "mode": mode, "ray": ray.__version__, "runs": []}
    try:
        for k, count in enumerate(replicas):
            app = mux_app(bundle, name=f"mux{count}", mode=mode, num_replicas=count, batch_wait_timeout_s=batch_wait_s)
            handle = serve.run(app, name=f"r{count}", route_prefix=f"/r{count}")
            instances = random_instances(requests, seed + k, manifest.seq_len, low, vocab)
            run = asyncio.run(run_load(port, instances, clients, path=f"/r{count}"))
            run["replicas"] = count
            run["replica_stats"] = _replica_stats(handle, count)
            summary["runs"].append(run)
            serve.delete(f"r{count}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return summary


def _replica_stats(handle: Any, replicas: int) -> list[dict[str, Any]]:
    """Each replica's own stats (one replica answers each call; call until all have)."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(20 * replicas):
        s = handle.stats.remote().result(timeout_s=30)
        seen[s["replica"]] = s
        if len(seen) == replicas:
            break
    return list(seen.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="A retrieval bundle (bench/serve_load.py --make-bundle).")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--mode", default="auto", help="mux_app mode: auto, instance_batch or packer.")
    p.add_argument("--batch-wait-s", type=float, default=0.002, help="@serve.batch batch_wait_timeout_s.")
    p.add_argument("--json", type=Path, help="Also write the summary here.")
    args = p.parse_args(argv)
    summary = bench(args.bundle, args.replicas, args.requests, args.clients, args.mode, args.batch_wait_s)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = all(r["wrong"] == 0 and r["ok"] + r["token_slips"] == args.requests for r in summary["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
