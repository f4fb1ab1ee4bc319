"""Loopback load test of `muxdeploy serve` (a benchmark, not a test): correctness, latency, throughput, drain.

Phase 1 (load): REQUESTS single-instance POST /v1/predict requests from CLIENTS concurrent keep-alive
clients. The bundle is a trained retrieval model, so every answer must be its own request's tokens:
any other answer is a packing/routing bug and is counted as `wrong`.
Phase 2 (drain): a fresh server, the same load, SIGTERM after DRAIN_AFTER answers. Every request the
server accepted must be answered (the server reports accepted/answered on exit; the clients count
what they received); requests after the listener closed fail to connect and were never accepted.

    python bench/serve_load.py --make-bundle /tmp/retrieval_bundle      # trains + exports (~30 s)
    python bench/serve_load.py --bundle /tmp/retrieval_bundle --requests 20000 --clients 64 --json out.json

Traffic goes to 127.0.0.1 only; loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"


def make_bundle(out: Path) -> None:
    """Train the tiny retrieval model (the packing oracle) and export it with the instance-batched graph."""
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.training import retrieval

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "ckpt.pt", retrieval.train_tiny_retrieval(seed=0))
    export_bundle(
        load_checkpoint(out / "ckpt.pt").export_spec(), 4, out / "mux_model", max_batch=8, instance_batch=True
    )
    print(f"wrote {out / 'mux_model'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(bundle: Path, port: int, workers: int, extra: list[str]) -> subprocess.Popen:
    """`muxdeploy serve` as a child process; returns once /v2/health/ready answers 200."""
    args = [sys.executable, "-m", "muxdeploy", "serve", str(bundle), "--host", HOST, "--port", str(port)]
    args += ["--workers", str(workers), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 120 s")


def random_instances(count: int, seed: int, seq_len: int, low: int, high: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(1, seq_len + 1))).tolist() for _ in range(count)]


class Client:
    """One keep-alive HTTP/1.1 connection (asyncio streams); reconnects after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body); raises OSError/IncompleteReadError when no response arrives."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        assert self.reader is not None
        status_line = await self.reader.readuntil(b"\r\n")
        if not status_line:
            raise ConnectionResetError("no response")
        status = int(status_line.split()[1])
        length, close, chunked = 0, False, False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            key, _, value = line.decode("latin-1").partition(":")
            if key.lower() == "content-length":
                length = int(value)
            elif key.lower() == "connection" and value.strip().lower() == "close":
                close = True
            elif key.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        payload = await self._chunked() if chunked else await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    async def _chunked(self) -> bytes:
        """A chunked body (Ray Serve's proxy answers this way): size line, data, CRLF; a 0 size ends it."""
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readuntil(b"\r\n")
        await self.reader.readuntil(b"\r\n")  # the empty trailer
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def run_load(
    port: int,
    instances: list[list[int]],
    clients: int,
    on_answer: Any = None,
    time_limit: float = 600.0,
    path: str = "/v1/predict",
) -> dict[str, Any]:
    """Send every instance once from `clients` concurrent clients as {"input_ids": [...]} to `path` (answers
    {"output": {"token_ids": [...]}}: muxdeploy serve's /v1/predict, the Ray deployment's route); check each
    answer against its own tokens."""
    next_index = 0
    latencies: list[float] = []
    counts = {"ok": 0, "token_slips": 0, "wrong": 0, "http_error": 0, "not_accepted": 0}
    examples: list[dict[str, list[int]]] = []
    statuses: dict[str, int] = {}
    answered = 0
    end_by = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal next_index, answered
        client = Client(port)
        while next_index < len(instances) and time.monotonic() < end_by:
            i = next_index
            next_index += 1
            body = json.dumps({"input_ids": instances[i]}).encode()
            t0 = time.perf_counter()
            try:
                status, payload = await client.post(path, body)
            except (OSError, asyncio.IncompleteReadError):
                client.close()
                counts["not_accepted"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            answered += 1
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 200:
                counts["http_error"] += 1
            else:
                got, want = json.loads(payload)["output"]["token_ids"], instances[i]
                kind = classify(got, want)
                counts[kind] += 1
                if kind != "ok" and len(examples) < 10:
                    examples.append({"want": want, "got": got})
            if on_answer is not None:
                on_answer(answered)
        client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(instances),
        "sent": next_index,
        "clients": clients,
        **counts,
        "statuses": statuses,
        "mismatch_examples": examples,
        **timing(latencies, answered, wall),
    }


def classify(got: list[int], want: list[int]) -> str:
    """'ok', 'token_slips' (the model's own errors: same length, at most a quarter of the tokens off) or 'wrong'
    (mostly not this request's tokens: routed to the wrong request, a serving bug)."""
    if got == want:
        return "ok"
    diff = sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))
    return "token_slips" if len(got) == len(want) and diff <= max(1, len(want) // 4) else "wrong"


def timing(latencies: list[float], answered: int, wall: float) -> dict[str, float]:
    """Wall time, throughput and latency percentiles (ms) of a load run."""
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "wall_s": round(wall, 3),
        "throughput_rps": round(answered / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
    }


def token_range(manifest: Any) -> tuple[int, int]:
    """[low, high) of the content token ids of a retrieval bundle (above every special id, below the vocabulary)."""
    cfg = manifest.data["model"]["config"]
    specials = [cfg.get("pad_token_id", 0), cfg.get("mux_prefix_filler_id", 1), cfg.get("mux_cls_id", 2)]
    return max(*specials, *cfg.get("mux_slot_ids", [0])) + 1, manifest.vocab_size or 64


def scrape_metrics(port: int) -> dict[str, float]:
    """Unlabelled values of the server's /metrics (first series of each name)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    text = raw.split(b"\r\n\r\n", 1)[1].decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = float(m.group(3))
    return out


def finish_server(proc: subprocess.Popen, timeout: float = 120) -> dict[str, Any]:
    """SIGTERM (if still running), wait, and parse the 'stopped: A accepted, B answered' line."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    m = re.search(r"stopped: (\d+) inference requests accepted, (\d+) answered", out or "")
    return {
        "exit_code": proc.returncode,
        "accepted": int(m.group(1)) if m else None,
        "answered": int(m.group(2)) if m else None,
        "log_tail": (out or "").strip().splitlines()[-3:],
    }


def bench(
    bundle: Path,
    requests: int,
    clients: int,
    workers: int,
    drain_requests: int,
    drain_after: int,
    extra: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Both phases; returns the summary dict."""
    from muxdeploy.core.manifest import Manifest

    manifest = Manifest.load(bundle)
    if manifest.task != "retrieval":
        raise SystemExit(
            f"{bundle} is a {manifest.task} bundle; the load test needs a retrieval bundle (--make-bundle)"
        )
    low, vocab = token_range(manifest)
    seq_len = manifest.seq_len
    summary: dict[str, Any] = {"bundle": str(bundle), "workers": workers, "server_args": extra}

    port = free_port()
    proc = start_server(bundle, port, workers, extra)
    try:
        load = asyncio.run(run_load(port, random_instances(requests, seed, seq_len, low, vocab), clients))
        load["server_metrics"] = {
            k: v
            for k, v in scrape_metrics(port).items()
            if k
            in (
                "nv_inference_request_success",
                "nv_inference_exec_count",
                "muxdeploy_batch_fill_ratio",
                "muxdeploy_padded_slots",
                "muxdeploy_groups",
                "nv_inference_queue_duration_us",
            )
        }
    finally:
        load_server = finish_server(proc)
    load["server"] = load_server
    summary["load"] = load

    if drain_requests:
        port = free_port()
        proc = start_server(bundle, port, workers, extra)
        fired = {"at": None}

        def on_answer(answered: int) -> None:
            if answered >= drain_after and fired["at"] is None:
                fired["at"] = answered
                proc.send_signal(signal.SIGTERM)

        try:
            drain = asyncio.run(
                run_load(port, random_instances(drain_requests, seed + 1, seq_len, low, vocab), clients, on_answer)
            )
        finally:
            server = finish_server(proc)
        drain["sigterm_after_answers"] = fired["at"]
        drain["server"] = server
        received = drain["ok"] + drain["token_slips"] + drain["wrong"] + drain["http_error"]
        drain["lost_accepted"] = None if server["accepted"] is None else server["accepted"] - received
        summary["drain"] = drain
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="A retrieval bundle (make one with --make-bundle).")
    p.add_argument("--make-bundle", type=Path, help="Train + export a tiny retrieval bundle into this directory.")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="muxdeploy serve --workers")
    p.add_argument("--drain-requests", type=int, default=5000, help="Phase 2 size (0: skip the drain phase).")
    p.add_argument("--drain-after", type=int, default=1000, help="Phase 2: SIGTERM after this many answers.")
    p.add_argument("--server-arg", action="append", default=[], help="Extra `muxdeploy serve` argument (repeat).")
    p.add_argument("--json", type=Path, help="Also write the summary here.")
    args = p.parse_args(argv)
    if args.make_bundle:
        make_bundle(args.make_bundle)
        return 0
    if not args.bundle:
        p.error("--bundle is required (or --make-bundle DIR first)")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    summary = bench(
        args.bundle, args.requests, args.clients, args.workers, args.drain_requests, args.drain_after, args.server_arg
    )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    load, drain = summary["load"], summary.get("drain")
    ok = load["wrong"] == 0 and load["ok"] + load["token_slips"] == args.requests
    if drain is not None:
        ok = ok and drain["wrong"] == 0 and drain["lost_accepted"] == 0 and drain["server"]["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
