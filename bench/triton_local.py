"""Run the tritonserver inside the `nvidia-pytriton` wheel locally (CPU is enough): for bench/triton_load.py and
tests/serving/test_triton.py (which loads this file through tests/bench_modules.py).

The wheel ships tritonserver 2.51 with the Python backend (no onnxruntime or TensorRT backend) and
Python-backend stubs for several Python versions. Every address is bound to 127.0.0.1; models load
explicitly (`load`). Python-backend models run in the wheel's venv via EXECUTION_ENV_PATH, which needs
numpy<2 (the wheel's backend reads numpy 1.x arrays) and onnxruntime for the python-onnxruntime engine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

VENV_VARIABLE = "MUXDEPLOY_TRITON_VENV"


def find_pytriton() -> tuple[Path, Path] | None:
    """(site-packages holding pytriton, its venv) from $MUXDEPLOY_TRITON_VENV or this interpreter, or None."""
    candidates = [Path(sys.prefix)]
    if os.environ.get(VENV_VARIABLE):
        candidates.insert(0, Path(os.environ[VENV_VARIABLE]))
    for venv in candidates:
        for sp in venv.glob("lib/python3*/site-packages"):
            if (sp / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
                return sp, venv
    return None


def problem() -> str | None:
    """Why a local tritonserver cannot serve muxdeploy's Python-backend models here, or None."""
    found = find_pytriton()
    if found is None:
        return f"tritonserver not found: pip install nvidia-pytriton==0.7.0 (or set {VENV_VARIABLE} to its venv)"
    sp, venv = found
    if not (sp / "onnxruntime").is_dir() or not (venv / "bin" / "activate").is_file():
        return f"{venv} needs onnxruntime and bin/activate to run the Python-backend models"
    numpy_dirs = list(sp.glob("numpy-*.dist-info"))
    if not numpy_dirs or not numpy_dirs[0].name.startswith("numpy-1."):
        return f"{venv} needs numpy<2: the wheel's Python backend reads numpy 1.x arrays"
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of one HTTP call."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


class LocalTritonServer:
    """tritonserver from the pytriton wheel on 127.0.0.1 with explicit model control; `stop()` when done."""

    def __init__(self, site_packages: Path, repos: list[Path], workdir: Path, start_timeout: float = 60.0) -> None:
        root = site_packages / "pytriton" / "tritonserver"
        backends = workdir / "backends"
        shutil.copytree(root / "backends", backends)
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / minor / "triton_python_backend_stub"
        if not stub.is_file():
            raise FileNotFoundError(f"the pytriton wheel has no Python-backend stub for Python {minor}")
        shutil.copy(stub, backends / "python")
        ports = [free_port() for _ in range(3)]
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.http_port = ports[0]
        env = dict(os.environ, LD_LIBRARY_PATH=str(site_packages / "nvidia_pytriton.libs"))
        args = [str(root / "bin" / "tritonserver"), f"--backend-directory={backends}", "--model-control-mode=explicit"]
        args += [f"--model-repository={r}" for r in repos]
        args += ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
        args += [f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}"]
        self.log = workdir / "tritonserver.log"
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited: {self.log.read_text()[-2000:]}")
            try:
                if http_json("GET", self.url + "/v2/health/live", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"tritonserver did not come up in {start_timeout:g} s")

    def load(self, name: str) -> tuple[int, Any]:
        """Load one model (explicit mode); (status, body)."""
        return http_json("POST", f"{self.url}/v2/repository/models/{name}/load", {}, timeout=120)

    def infer(self, name: str, rows: list[list[int]]) -> tuple[int, Any]:
        """One V2 JSON inference with input_ids INT32 [len(rows), len(rows[0])]."""
        width = len(rows[0])
        flat = [t for r in rows for t in r]
        body = {"inputs": [{"name": "input_ids", "shape": [len(rows), width], "datatype": "INT32", "data": flat}]}
        return http_json("POST", f"{self.url}/v2/models/{name}/infer", body)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
