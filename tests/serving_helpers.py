"""Helpers for the serving tests (importable: tests/ is on the path)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def random_instances(
    count: int, seed: int, seq_len: int = 8, low: int = 8, high: int = 64, min_len: int = 1
) -> list[list[int]]:
    """Random content-token instances of random lengths min_len..seq_len (ids in [low, high))."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(min_len, seq_len + 1))).tolist() for _ in range(count)]


def check_answers(pairs: list[tuple[list[int], list[int]]], max_slipped: int = 2) -> None:
    """Retrieval answers vs their own instances (>= 3 tokens each, so a misrouted answer cannot pass).

    The trained oracle is ~99.9% per token: an answer may differ from its instance in one token, and at
    most `max_slipped` answers may; an answer that is another request's tokens differs in most positions.
    """
    slipped = 0
    for got, want in pairs:
        assert len(want) >= 3 and len(got) == len(want), (got, want)
        diff = sum(a != b for a, b in zip(got, want, strict=True))
        assert diff <= 1, f"answer {got} is not its request's {want}"
        slipped += diff
    assert slipped <= max_slipped, f"{slipped} answers slipped a token"


HOST = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m muxdeploy serve` as a child process on a free loopback port (and a gRPC port with grpc=True)."""

    def __init__(self, bundle: Path, *args: str, grpc: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "muxdeploy", "serve", str(bundle), "--port", str(self.port), *args]
        self.grpc_url = ""
        if grpc:
            grpc_port = free_port()
            self.grpc_url = f"{HOST}:{grpc_port}"
            cmd += ["--grpc-port", str(grpc_port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if call(self, "GET", "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("serve did not become ready in 60 s")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait; (exit code, output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


def call(
    server: Server, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def call_json(server: Server, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, Any]:
    status, _, raw = call(server, method, path, body)
    return status, json.loads(raw)
