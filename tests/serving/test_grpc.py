"""`muxdeploy serve --grpc-port`: KServe V2 gRPC spoken by the stock tritonclient.grpc client, beside HTTP.

A real server process on loopback; answers are checked against the trained retrieval oracle (every answer
must be its own request's tokens).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import Server, call, check_answers, random_instances

pytest.importorskip("starlette", reason="muxdeploy serve needs the [serve] extra")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the gRPC listener needs the [serve] extra")
httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "muxdeploy"


@pytest.fixture(scope="module")
def server(retrieval_bundle: Path) -> Iterator[Server]:
    srv = Server(retrieval_bundle, "--workers", "2", grpc=True)
    yield srv
    code, out = srv.stop()
    assert code == 0, out


def padded(rows: list[list[int]], width: int = 8) -> np.ndarray:
    """Rows right-padded with the pad id 0 to [B, width] int32 (trailing pad ids are padding)."""
    return np.array([(r + [0] * width)[:width] for r in rows], dtype=np.int32)


def grpc_infer(client: grpcclient.InferenceServerClient, rows: list[list[int]], **kwargs: object) -> np.ndarray:
    ids = padded(rows)
    tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    return client.infer(MODEL, [tensor], **kwargs).as_numpy("token_ids")


def http_infer(client: httpclient.InferenceServerClient, rows: list[list[int]]) -> np.ndarray:
    ids = padded(rows)
    tensor = httpclient.InferInput("input_ids", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    return client.infer(MODEL, [tensor]).as_numpy("token_ids")


def grpc_error(client: grpcclient.InferenceServerClient, rows: list[list[int]], **kwargs: object) -> tuple[str, str]:
    """(status code name, message) of a call that must fail."""
    with pytest.raises(InferenceServerException) as err:
        grpc_infer(client, rows, **kwargs)
    return str(err.value.status()).removeprefix("StatusCode."), err.value.message()


def test_health_metadata_config_stats(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_server_metadata(as_json=True)["name"] == "muxdeploy"
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["inputs"][0] == {"name": "input_ids", "datatype": "INT32", "shape": ["-1", "-1"]}
    assert meta["outputs"] == [{"name": "token_ids", "datatype": "INT64", "shape": ["-1", "8"]}]
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    grpc_infer(client, random_instances(2, seed=1, min_len=3))
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert stats["name"] == MODEL and int(stats["inference_count"]) >= 2
    with pytest.raises(InferenceServerException, match="unknown model") as err:
        client.get_model_metadata("other")
    assert "NOT_FOUND" in str(err.value.status())
    client.close()


def test_concurrent_grpc_and_http_clients_get_their_own_answers(server: Server) -> None:
    """8 gRPC + 8 HTTP tritonclient clients at once, batches of 1-3 rows: instances of both protocols share runs."""
    failures: list[BaseException] = []
    answers: list[tuple[list[int], list[int]]] = []
    lock = threading.Lock()
    before = _metric(server, "nv_inference_exec_count")

    def client_loop(k: int, protocol: str) -> None:
        try:
            if protocol == "grpc":
                client = grpcclient.InferenceServerClient(server.grpc_url)
                run = grpc_infer
            else:
                client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
                run = http_infer
            rng = np.random.default_rng(k)
            for i in range(25):
                rows = random_instances(int(rng.integers(1, 4)), seed=1000 * k + i, min_len=3)
                got = run(client, rows)
                with lock:
                    answers.extend((g[: len(r)].tolist(), r) for g, r in zip(got, rows, strict=True))
            client.close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client_loop, args=(k, p)) for k in range(8) for p in ("grpc", "http")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[0]
    assert len(answers) >= 16 * 25
    check_answers(answers, max_slipped=4)
    runs = _metric(server, "nv_inference_exec_count") - before
    assert runs < len(answers)  # instances of many requests (both protocols) shared backend runs


def test_typed_contents_and_output_selection(server: Server) -> None:
    """Inputs as typed InferTensorContents (not raw bytes), outputs asked for by name."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rows = random_instances(3, seed=7, min_len=3)
    ids = padded(rows).astype(np.int64)
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="typed-1")
    tensor = request.inputs.add(name="input_ids", datatype="INT64", shape=list(ids.shape))
    tensor.contents.int64_contents.extend(ids.reshape(-1).tolist())
    request.outputs.add(name="token_ids")
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert reply.id == "typed-1" and reply.outputs[0].name == "token_ids" and reply.outputs[0].datatype == "INT64"
        got = np.frombuffer(reply.raw_output_contents[0], dtype=np.int64).reshape(list(reply.outputs[0].shape))
        check_answers([(g[: len(r)].tolist(), r) for g, r in zip(got, rows, strict=True)])
        request.ClearField("outputs")
        request.outputs.add(name="nope")
        with pytest.raises(grpc.RpcError) as err:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown output" in err.value.details()


def test_errors_have_their_status_codes(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    code, message = grpc_error(client, [[9, 99]])
    assert code == "INVALID_ARGUMENT" and message == "instance token id 99 is outside the vocabulary [0, 64)"
    with pytest.raises(InferenceServerException) as err:
        ids = padded([[9, 10, 11]])
        tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
        tensor.set_data_from_numpy(ids)
        client.infer("other", [tensor])
    assert "NOT_FOUND" in str(err.value.status()) and "unknown model 'other'" in err.value.message()
    wrong = grpcclient.InferInput("input_ids", [1, 2], "FP32")
    wrong.set_data_from_numpy(np.array([[9.0, 10.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [wrong])
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "INT32 or INT64" in err.value.message()
    # more instances in one request than the queue holds (256 with 2 workers): split it
    code, message = grpc_error(client, random_instances(300, seed=3, min_len=3))
    assert code == "RESOURCE_EXHAUSTED" and "split it" in message
    assert "\n" not in message
    # Triton's `timeout` parameter (microseconds): 1 us passes before any dispatch
    code, message = grpc_error(client, [[9, 10, 11]], timeout=1)
    assert code == "DEADLINE_EXCEEDED" and "deadline" in message
    assert _metric(server, "muxdeploy_grpc_requests", 'method="ModelInfer",code="INVALID_ARGUMENT"') >= 2
    client.close()


def test_queue_full_is_resource_exhausted(retrieval_bundle: Path) -> None:
    """A 1-instance queue held by a request the batcher keeps 1.5 s: the next one is refused at once."""
    srv = Server(retrieval_bundle, "--queue-size", "1", "--max-wait-ms", "1500", grpc=True)
    try:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        first: list[np.ndarray] = []
        holder = threading.Thread(target=lambda: first.append(grpc_infer(client, [[9, 10, 11]])))
        holder.start()
        deadline = time.monotonic() + 10
        while _metric(srv, "nv_inference_pending_request_count") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        code, message = grpc_error(client, [[12, 13, 14]])
        assert code == "RESOURCE_EXHAUSTED" and "queue full" in message and time.monotonic() - t0 < 1.0
        holder.join(30)
        check_answers([(first[0][0][:3].tolist(), [9, 10, 11])])
        client.close()
    finally:
        code, out = srv.stop()
    assert code == 0 and "stopped: 2 inference requests accepted, 2 answered" in out


def test_sigterm_drains_both_listeners(retrieval_bundle: Path) -> None:
    """SIGTERM under gRPC + HTTP load: every call is its own answer or an error; accepted == answered; exit 0."""
    srv = Server(retrieval_bundle, grpc=True)
    outcomes: dict[str, int] = {}
    answers: list[tuple[list[int], list[int]]] = []
    cancelled_at: list[float] = []  # when a gRPC call came back CANCELLED
    lock = threading.Lock()
    stop_at = time.monotonic() + 30

    def note(key: str) -> None:
        with lock:
            outcomes[key] = outcomes.get(key, 0) + 1

    def client_loop(k: int, protocol: str) -> None:
        try:
            if protocol == "grpc":
                client, run = grpcclient.InferenceServerClient(srv.grpc_url), grpc_infer
            else:
                client, run = httpclient.InferenceServerClient(srv.url.removeprefix("http://")), http_infer
        except Exception:
            return
        i = 0
        while time.monotonic() < stop_at:
            rows = random_instances(1, seed=10_000 * k + i, min_len=3)
            i += 1
            try:
                got = run(client, rows)
            except InferenceServerException as exc:
                status = str(exc.status())
                note(f"{protocol}:{status}")
                if "CANCELLED" in status:
                    cancelled_at.append(time.monotonic())
                if srv.proc.poll() is not None:
                    return
                time.sleep(0.01)
                continue
            except Exception as exc:  # connection refused / reset / closed while draining: the client's side
                note(f"{protocol}:connection:{type(exc).__name__}")
                return
            with lock:
                answers.append((got[0][: len(rows[0])].tolist(), rows[0]))
            note(f"{protocol}:ok")
        client.close()

    threads = [threading.Thread(target=client_loop, args=(k, p)) for k in range(4) for p in ("grpc", "http")]
    for t in threads:
        t.start()
    while len(answers) < 200 and time.monotonic() < stop_at:
        time.sleep(0.01)
    sigterm_at = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code, out = srv.stop()
    for t in threads:
        t.join(60)
    assert code == 0, out
    check_answers(answers, max_slipped=4)
    assert outcomes.get("grpc:ok", 0) > 0 and outcomes.get("http:ok", 0) > 0, outcomes
    errors = {k.split(":", 1)[1] for k in outcomes if not k.endswith(":ok")}
    # draining answers UNAVAILABLE / 503; afterwards the listeners are gone (connection errors: refused, reset, or
    # geventhttpclient's HTTPConnectionClosed on a kept-alive connection the draining server closed). grpc's server
    # cancels calls that no handler has taken yet when it stops (CANCELLED, grpc/grpc#41785): allowed only after
    # the SIGTERM. The server's own count below proves no request a handler took went unanswered.
    drained = ("UNAVAILABLE", "503", "CANCELLED")
    unexpected = [e for e in errors if not (any(d in e for d in drained) or e.startswith("connection:"))]
    assert not unexpected, sorted(outcomes.items())
    assert all(t >= sigterm_at for t in cancelled_at), (sigterm_at, cancelled_at)
    line = next(x for x in out.splitlines() if x.startswith("stopped:"))
    accepted, answered = (int(w) for w in line.replace(",", "").split() if w.isdigit())
    assert accepted == answered >= len(answers)


def _metric(server: Server, name: str, labels: str | None = None) -> float:
    """A value from /metrics: the series with `labels` (exact label text), else the first of that name."""
    text = call(server, "GET", "/metrics")[2].decode()
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if labels is None or line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
