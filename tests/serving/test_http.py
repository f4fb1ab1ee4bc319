"""`muxdeploy serve`: a real server process on loopback, spoken to over real sockets.

Needs the [serve] extra (starlette, uvicorn); skips without it.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_modules import load_bench_module
from serving_helpers import HOST, Server, call, call_json, check_answers, random_instances

pytest.importorskip("starlette", reason="muxdeploy serve needs the [serve] extra: pip install starlette uvicorn")
pytest.importorskip("uvicorn", reason="muxdeploy serve needs the [serve] extra: pip install starlette uvicorn")


@pytest.fixture(scope="module")
def server(retrieval_bundle: Path) -> Iterator[Server]:
    srv = Server(retrieval_bundle, "--max-body-bytes", "4096", "--workers", "2")
    yield srv
    srv.stop()


def _v2(rows: list[list[int]], datatype: str = "INT32") -> dict[str, Any]:
    width = max(map(len, rows))
    padded = [r + [0] * (width - len(r)) for r in rows]
    return {
        "inputs": [
            {
                "name": "input_ids",
                "shape": [len(rows), width],
                "datatype": datatype,
                "data": [t for r in padded for t in r],
            }
        ]
    }


def test_health_and_metadata(server: Server) -> None:
    assert call_json(server, "GET", "/v2/health/live") == (200, {"live": True})
    assert call_json(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = call_json(server, "GET", "/v2/models/muxdeploy")
    assert status == 200 and meta["inputs"][0] == {"name": "input_ids", "datatype": "INT32", "shape": [-1, -1]}
    assert meta["outputs"] == [{"name": "token_ids", "datatype": "INT64", "shape": [-1, 8]}]
    status, cfg = call_json(server, "GET", "/v2/models/muxdeploy/config")
    assert (
        status == 200 and cfg["max_batch_size"] == 32 and cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    )
    assert call_json(server, "GET", "/v2/models/muxdeploy/ready")[0] == 200


def test_v2_json_and_binary(server: Server) -> None:
    rows = random_instances(5, seed=1, min_len=3)
    status, body = call_json(server, "POST", "/v2/models/muxdeploy/infer", {**_v2(rows), "id": "r1"})
    assert status == 200 and body["id"] == "r1"
    out = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
    check_answers([(got[: len(row)].tolist(), row) for row, got in zip(rows, out, strict=True)])
    assert all((got[len(row) :] == -1).all() for row, got in zip(rows, out, strict=True))
    # Triton's binary tensor extension (what tritonclient sends by default), binary output asked for
    ids = np.array([(r + [0] * 8)[:8] for r in rows], dtype=np.int32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(ids.shape),
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": ids.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, raw = call(
        server,
        "POST",
        "/v2/models/muxdeploy/infer",
        header + ids.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    n = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    meta = json.loads(raw[:n])["outputs"][0]
    got = np.frombuffer(raw[n:], dtype=np.int64).reshape(meta["shape"])
    assert meta["parameters"]["binary_data_size"] == got.nbytes
    check_answers([(g[: len(r)].tolist(), r) for g, r in zip(got, rows, strict=True)])


def test_v1_predict(server: Server) -> None:
    rows = random_instances(3, seed=2, min_len=3)
    status, single = call_json(server, "POST", "/v1/predict", {"input_ids": rows[0]})
    assert status == 200 and list(single) == ["output"] and list(single["output"]) == ["token_ids"]
    status, body = call_json(server, "POST", "/v1/predict", {"instances": [rows[1], {"input_ids": rows[2]}, [9, 640]]})
    assert status == 200
    got = [single["output"]["token_ids"], body["outputs"][0]["token_ids"], body["outputs"][1]["token_ids"]]
    check_answers(list(zip(got, rows, strict=True)))
    assert "outside the vocabulary" in body["outputs"][2]["error"]
    status, body = call_json(server, "POST", "/v1/predict", {"text": "no tokenizer here"})
    assert status == 400 and "text" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/v2/models/muxdeploy/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/models/muxdeploy/infer", {"inputs": []}, 400, "non-empty 'inputs'"),
        ("POST", "/v2/models/muxdeploy/infer", _v2([[9, 10]], "FP32"), 400, "INT32 or INT64"),
        (
            "POST",
            "/v2/models/muxdeploy/infer",
            {"inputs": [{"name": "input_ids", "shape": [4], "datatype": "INT32", "data": [9, 10, 11, 12]}]},
            400,
            "shape [B, T]",
        ),
        (
            "POST",
            "/v2/models/muxdeploy/infer",
            {"inputs": [{"name": "input_ids", "shape": [2, 2], "datatype": "INT32", "data": [9, 10, 11]}]},
            400,
            "do not fill shape",
        ),
        (
            "POST",
            "/v2/models/muxdeploy/infer",
            {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT32", "data": ["a", "b"]}]},
            400,
            "does not match datatype",
        ),
        (
            "POST",
            "/v2/models/muxdeploy/infer",
            {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            400,
            "unknown input",
        ),
        ("POST", "/v2/models/muxdeploy/infer", {**_v2([[9]]), "outputs": [{"name": "nope"}]}, 400, "unknown output"),
        ("POST", "/v2/models/muxdeploy/infer", _v2([[9, 99]]), 400, "outside the vocabulary"),
        ("POST", "/v2/models/other/infer", _v2([[9]]), 404, "unknown model"),
        ("GET", "/v2/models/muxdeploy/infer", None, 405, "not allowed"),
        ("GET", "/no/such/route", None, 404, "no route"),
        ("POST", "/v1/predict", {"input_ids": "abc"}, 400, "text"),
        ("POST", "/v1/predict", [1, 2], 400, "JSON object"),
        ("POST", "/v1/predict", {"instances": 3}, 400, "must be a list"),
        ("POST", "/v1/predict", {"instances": []}, 400, "no instances"),
        ("POST", "/v1/predict", {"input_ids": [9], "timeout_ms": -1}, 400, "timeout_ms"),
        ("POST", "/v1/predict", {"input_ids": [9] * 3000}, 413, "exceeds the limit"),
    ],
)
def test_bad_requests_get_4xx_json(server: Server, method: str, path: str, body: Any, status: int, needle: str) -> None:
    raw = json.dumps(body).encode() if isinstance(body, dict | list) else body
    got, _, payload = call(server, method, path, raw)
    assert got == status, payload
    error = json.loads(payload)["error"]
    assert needle in error and "\n" not in error


def test_chunked_oversize_body_is_413(server: Server) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"[" + b"9," * 1500
        s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
        reply = b""
        while b'"error"' not in reply and (chunk := s.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b'"error"' in reply


def test_metrics(server: Server) -> None:
    call_json(server, "POST", "/v1/predict", {"input_ids": [9, 10]})
    call(server, "GET", "/no/such/page")
    status, headers, raw = call(server, "GET", "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "muxdeploy_batch_fill_ratio",
        "muxdeploy_padded_slots",
    ):
        assert f"# TYPE {name} " in text and f'{name}{{model="muxdeploy",version="1"}} ' in text
    assert 'muxdeploy_http_responses{code="200"}' in text and 'muxdeploy_http_responses{code="404"}' in text
    status, stats = call_json(server, "GET", "/v2/models/muxdeploy/stats")
    entry = stats["model_stats"][0]
    assert status == 200 and entry["name"] == "muxdeploy" and entry["inference_count"] >= 1
    assert 1 <= entry["execution_count"] <= entry["inference_count"]
    assert entry["inference_stats"]["success"]["count"] >= 1 and entry["inference_stats"]["queue"]["ns"] > 0


def test_queue_full_is_429_at_once(retrieval_bundle: Path) -> None:
    srv = Server(retrieval_bundle, "--queue-size", "1", "--max-wait-ms", "1500")
    try:
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(call(srv, "POST", "/v1/predict", {"input_ids": [9]})[0]))
        first.start()
        deadline = time.monotonic() + 10
        while "nv_inference_pending_request_count{" not in _pending(srv) and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        status, headers, payload = call(srv, "POST", "/v1/predict", {"input_ids": [10]})
        assert status == 429 and time.monotonic() - t0 < 1.0, payload
        assert "queue full" in json.loads(payload)["error"] and headers["retry-after"] == "1"
        first.join()
        assert results == [200]
    finally:
        code, out = srv.stop()
    assert code == 0 and "stopped: 2 inference requests accepted, 2 answered" in out


def _pending(srv: Server) -> str:
    """The metrics line of the pending gauge when it is 1 (an instance is queued), else ''."""
    text = call(srv, "GET", "/metrics")[2].decode()
    return next(
        (
            line
            for line in text.splitlines()
            if line.startswith("nv_inference_pending_request_count{") and line.endswith(" 1")
        ),
        "",
    )


def test_port_in_use_is_one_line(retrieval_bundle: Path) -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "muxdeploy", "serve", str(retrieval_bundle), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot listen on") and "--port" in proc.stderr


def test_small_load_and_drain(retrieval_bundle: Path) -> None:
    """bench/serve_load.py at 500 requests / 16 clients: own answers only; SIGTERM mid-load loses nothing accepted."""
    summary = load_bench_module("serve_load").bench(retrieval_bundle, 500, 16, 1, 500, 150, [])
    load, drain = summary["load"], summary["drain"]
    assert load["wrong"] == 0 and load["http_error"] == 0 and load["not_accepted"] == 0, load
    assert load["ok"] + load["token_slips"] == 500 and load["token_slips"] <= 5
    assert load["server"] == {**load["server"], "exit_code": 0, "accepted": 500, "answered": 500}
    assert load["server_metrics"]["nv_inference_exec_count"] < 500  # instances of many requests shared runs
    assert drain["server"]["exit_code"] == 0 and drain["lost_accepted"] == 0 and drain["wrong"] == 0
    assert drain["ok"] + drain["token_slips"] >= 150
    assert set(drain["statuses"]) <= {"200", "503"}


def test_tritonclient_unchanged(server: Server) -> None:
    """The stock tritonclient HTTP client (binary tensors by default) works against muxdeploy serve."""
    httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]' to run this check")
    client = httpclient.InferenceServerClient(f"{HOST}:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("muxdeploy")
    assert client.get_model_metadata("muxdeploy")["outputs"][0]["name"] == "token_ids"
    assert client.get_model_config("muxdeploy")["max_batch_size"] == 32
    assert client.get_inference_statistics("muxdeploy")["model_stats"][0]["name"] == "muxdeploy"
    rows = random_instances(6, seed=5, min_len=3)
    ids = np.array([(r + [0] * 8)[:8] for r in rows], dtype=np.int32)
    for binary in (True, False):
        tensor = httpclient.InferInput("input_ids", list(ids.shape), "INT32")
        tensor.set_data_from_numpy(ids, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("token_ids", binary_data=binary)]
        got = client.infer("muxdeploy", [tensor], outputs=wanted).as_numpy("token_ids")
        check_answers([(g[: len(r)].tolist(), r) for g, r in zip(got, rows, strict=True)])
    bad = httpclient.InferInput("input_ids", [1, 2], "INT32")
    bad.set_data_from_numpy(np.array([[9, 99]], dtype=np.int32))
    with pytest.raises(Exception, match="outside the vocabulary"):
        client.infer("muxdeploy", [bad])
    client.close()


def _text_bundle(retrieval_bundle: Path, out: Path) -> Path:
    """The retrieval bundle plus a word-level tokenizer.json: word 'wK' is token id K."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from muxdeploy.core.manifest import Manifest

    shutil.copytree(retrieval_bundle, out)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{k}": k for k in range(8, 64)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    manifest = Manifest.load(out)
    manifest.data["tokenizer"] = "tokenizer.json"
    manifest.save()
    return out


def test_text_instances(retrieval_bundle: Path, tmp_path: Path) -> None:
    srv = Server(_text_bundle(retrieval_bundle, tmp_path / "text_bundle"))
    try:
        rows = random_instances(4, seed=9, min_len=3)
        texts = [" ".join(f"w{t}" for t in r) for r in rows]
        status, meta = call_json(srv, "GET", "/v2/models/muxdeploy")
        assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
        status, body = call_json(srv, "POST", "/v1/predict", {"instances": texts[:2]})
        assert status == 200
        check_answers([(o["token_ids"], r) for o, r in zip(body["outputs"], rows[:2], strict=True)])
        v2 = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts[2:]}]}
        status, body = call_json(srv, "POST", "/v2/models/muxdeploy/infer", v2)
        out = np.asarray(body["outputs"][0]["data"]).reshape(2, 8)
        check_answers([(o[: len(r)].tolist(), r) for o, r in zip(out, rows[2:], strict=True)])
        # BYTES in Triton's binary layout: 4-byte little-endian length, then the UTF-8 bytes
        raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts[2:])
        header = json.dumps(
            {
                "inputs": [
                    {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
                ]
            }
        ).encode()
        status, _, payload = call(
            srv,
            "POST",
            "/v2/models/muxdeploy/infer",
            header + raw,
            {"Inference-Header-Content-Length": str(len(header))},
        )
        assert status == 200 and json.loads(payload)["outputs"][0]["data"] == body["outputs"][0]["data"]
    finally:
        assert srv.stop()[0] == 0
