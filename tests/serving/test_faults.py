"""Faults in the engine, injected through real backends: a batch that fails, a worker that cannot recover.

The fault bundle is the trained retrieval bundle whose model.onnx gained three nodes: when any input id
equals SENTINEL, a Gather reads index 7 of a 1-element tensor and onnxruntime fails the whole run
("indices element out of data bounds"); otherwise the Gather adds 0.0 to the logits (answers unchanged).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import Server, call, call_json, check_answers, random_instances

pytest.importorskip("starlette", reason="muxdeploy serve needs the [serve] extra")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the gRPC listener needs the [serve] extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

SENTINEL = 63  # normal traffic here uses ids 8..59


def add_sentinel_fault(model: Path, sentinel: int) -> None:
    """Graph surgery on `model`: the run fails (out-of-bounds Gather) whenever an input id equals `sentinel`."""
    import onnx
    from onnx import TensorProto, helper

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    out = graph.output[0].name
    for node in graph.node:  # the node that wrote the output now writes an inner name
        node.output[:] = [f"{out}__inner" if o == out else o for o in node.output]
    ids = graph.input[0].name
    graph.initializer.extend(
        [
            helper.make_tensor("fault_sentinel", TensorProto.INT32, [], [sentinel]),
            helper.make_tensor("fault_stride", TensorProto.INT64, [], [7]),
            helper.make_tensor("fault_zero", TensorProto.FLOAT, [1], [0.0]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Equal", [ids, "fault_sentinel"], ["fault_hit"]),
            helper.make_node("Cast", ["fault_hit"], ["fault_hit_i"], to=TensorProto.INT64),
            helper.make_node("ReduceMax", ["fault_hit_i"], ["fault_any"], keepdims=0),
            helper.make_node("Mul", ["fault_any", "fault_stride"], ["fault_index"]),
            helper.make_node("Gather", ["fault_zero", "fault_index"], ["fault_add"]),
            helper.make_node("Add", [f"{out}__inner", "fault_add"], [out]),
        ]
    )
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(model))


@pytest.fixture(scope="module")
def fault_bundle(retrieval_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the retrieval bundle whose model.onnx fails any run that holds SENTINEL (manifest sha updated)."""
    from muxdeploy.core.manifest import Manifest, sha256_file

    out = tmp_path_factory.mktemp("fault") / "mux_model"
    shutil.copytree(retrieval_bundle, out)
    add_sentinel_fault(out / "model.onnx", SENTINEL)
    manifest = Manifest.load(out)
    manifest.data["artifacts"]["model.onnx"]["sha256"] = sha256_file(out / "model.onnx")
    manifest.save()
    return out


def metric(server: Server, name: str) -> float:
    """The first series of `name` in /metrics."""
    for line in call(server, "GET", "/metrics")[2].decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def v2_body(rows: list[list[int]]) -> dict:
    ids = [(r + [0] * 8)[:8] for r in rows]
    flat = [t for r in ids for t in r]
    return {"inputs": [{"name": "input_ids", "shape": [len(ids), 8], "datatype": "INT32", "data": flat}]}


def test_failed_batch_fails_its_requests_and_the_server_goes_on(fault_bundle: Path) -> None:
    """One batch run raises inside onnxruntime: its requests get 500 / INTERNAL with the reason, nothing else does,
    later requests (both protocols) are answered right, readiness stays true, /metrics counts the failures."""
    srv = Server(fault_bundle, "--max-wait-ms", "300", grpc=True)
    try:
        # a batch: one request with the sentinel and 5 concurrent normal requests inside the 300 ms window
        normal = [random_instances(2, seed=40 + k, min_len=3, high=60) for k in range(5)]
        poisoned = [*random_instances(2, seed=50, min_len=3, high=60), [9, SENTINEL, 10]]
        replies: dict[int, tuple[int, dict]] = {}

        def send(k: int, rows: list[list[int]]) -> None:
            replies[k] = call_json(srv, "POST", "/v2/models/muxdeploy/infer", v2_body(rows))

        threads = [threading.Thread(target=send, args=(k, rows)) for k, rows in enumerate([*normal, poisoned])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        status, body = replies[5]
        assert status == 500 and "failed on a batch" in body["error"] and "indices" in body["error"], body
        failed = [k for k, (s, _) in replies.items() if s != 200]
        assert all(replies[k][0] == 500 for k in failed)  # a failure is a 500 with the reason, never a wrong answer
        for k in set(range(5)) - set(failed):
            out = np.asarray(replies[k][1]["outputs"][0]["data"]).reshape(-1, 8)
            check_answers([(o[: len(r)].tolist(), r) for o, r in zip(out, normal[k], strict=True)])
        assert len(failed) >= 2  # the 300 ms window put other requests into the sentinel's batch
        failed_instances = sum(len(poisoned) if k == 5 else len(normal[k]) for k in failed)
        assert metric(srv, "muxdeploy_backend_failures") == 1
        assert metric(srv, "nv_inference_request_failure") == failed_instances
        # gRPC: the same fault is INTERNAL with the reason
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        ids = np.array([[9, 10, SENTINEL, 0, 0, 0, 0, 0]], dtype=np.int32)
        tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
        tensor.set_data_from_numpy(ids)
        with pytest.raises(InferenceServerException) as err:
            client.infer("muxdeploy", [tensor])
        assert "INTERNAL" in str(err.value.status()) and "failed on a batch" in err.value.message()
        # the worker lives on (its backend passed the probe): ready, and later requests are answered right
        assert call_json(srv, "GET", "/v2/health/ready") == (200, {"ready": True})
        assert client.is_server_ready() and metric(srv, "muxdeploy_workers_retired") == 0
        rows = random_instances(6, seed=60, min_len=3, high=60)
        status, body = call_json(srv, "POST", "/v2/models/muxdeploy/infer", v2_body(rows))
        out = np.asarray(body["outputs"][0]["data"]).reshape(-1, 8)
        check_answers([(o[: len(r)].tolist(), r) for o, r in zip(out, rows, strict=True)])
        ids = np.array([(r + [0] * 8)[:8] for r in rows], dtype=np.int32)
        tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
        tensor.set_data_from_numpy(ids)
        got = client.infer("muxdeploy", [tensor]).as_numpy("token_ids")
        check_answers([(g[: len(r)].tolist(), r) for g, r in zip(got, rows, strict=True)])
        assert metric(srv, "muxdeploy_backend_failures") == 2
        client.close()
    finally:
        code, out = srv.stop()
    assert code == 0, out


def test_worker_that_cannot_recover_turns_readiness_off(retrieval_bundle: Path) -> None:
    """A worker whose onnxruntime session is gone (released under it) fails its batch and its probe: it retires,
    readiness says why, and requests fail at once with 503 instead of waiting for a worker that will not come."""
    from muxdeploy.core.errors import BackendError
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.runtimes.backends import create, select
    from muxdeploy.runtimes.runtime import MuxRuntime
    from muxdeploy.serving.service import ServerState, ServingError

    manifest = Manifest.load(retrieval_bundle)
    selection = select(manifest, "onnxruntime-cpu", "fp32")
    made = []

    def factory() -> object:
        made.append(create(selection, manifest, manifest.max_batch))
        return made[-1]

    runtime = MuxRuntime(retrieval_bundle, backend=factory, workers=1, max_wait_ms=0)
    try:
        state = ServerState(runtime, "muxdeploy", 1 << 20, 64)
        rows = random_instances(3, seed=70, min_len=3, high=60)
        first = asyncio.run(state.infer({"input_ids": np.array([(r + [0] * 8)[:8] for r in rows])}, None, None))
        check_answers([(o[: len(r)].tolist(), r) for o, r in zip(first["token_ids"], rows, strict=True)])
        assert state.unready_reason() is None and len(made) == 2  # the predict() backend + the worker's
        made[1].deactivate()  # the worker's session is released: every run of it fails from now on
        with pytest.raises(BackendError, match="not active"):
            runtime.submit(rows[0]).result(timeout=30)
        m = runtime.metrics()
        assert m["muxdeploy_workers_retired"] == 1 and m["muxdeploy_backend_failures"] == 1
        assert "no engine worker left" in (state.unready_reason() or "")
        with pytest.raises(ServingError) as err:
            asyncio.run(state.infer({"input_ids": np.array([[9, 10, 11]])}, None, None))
        assert err.value.status == 503 and "no engine worker left" in str(err.value)
        with pytest.raises(BackendError, match="no engine worker is left"):
            runtime.submit(rows[0])
    finally:
        runtime.close()
