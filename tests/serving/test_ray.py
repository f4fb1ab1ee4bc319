"""Ray Serve deployment: concurrent single instances batched by @serve.batch, each answered with its own result.

Needs `ray[serve]` (the [ray] extra, part of [test]): skips without it on a developer's machine, fails under CI
(`CI=true`), where it must run. Ray stays on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps
it from swapping 127.0.0.1 for the machine's address, and the HTTP proxy listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import check_answers, random_instances

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
if os.environ.get("CI") == "true":  # CI installs [test], which brings ray[serve]: the Ray tests must run there
    import ray
    from ray import serve
else:
    ray = pytest.importorskip("ray", reason="the Ray Serve deployment needs ray[serve]: pip install 'muxdeploy[ray]'")
    serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[int]:
    """A local Ray with Serve's HTTP proxy on 127.0.0.1, declaring 2 (fake) GPUs; yields the HTTP port.

    Ray schedules `num_gpus` and sets CUDA_VISIBLE_DEVICES from declared resources alone, so GPU placement is
    testable on a CPU machine. The deployments here pass device="cpu" (sessions stay on the CPU even where a
    declared GPU is real or not), so the module runs the same on a GPU host; test_ray_gpu.py uses real GPUs.
    """
    port = _free_port()
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.mark.parametrize("mode", ["instance_batch", "packer"])
def test_concurrent_instances_get_their_own_answers(ray_serve: int, retrieval_bundle: Path, mode: str) -> None:
    from muxdeploy.serving.ray import mux_app

    app = mux_app(retrieval_bundle, name=f"mux_{mode}", mode=mode, batch_wait_timeout_s=0.05, device="cpu")
    handle = serve.run(app, name=mode, route_prefix=f"/{mode}")
    instances = random_instances(64, seed=11, min_len=3)
    bad = {7: [9, 640], 30: "text without a tokenizer"}
    calls = [bad.get(i, inst) for i, inst in enumerate(instances)]
    responses = [handle.predict.remote(inst) for inst in calls]  # all in flight at once
    answers = []
    for i, response in enumerate(responses):
        if i in bad:
            with pytest.raises(Exception, match=r"outside the vocabulary|text"):
                response.result(timeout_s=60)
            continue
        answers.append((response.result(timeout_s=60)["token_ids"], instances[i]))
    check_answers(answers)
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["mode"] == mode and stats["instances"] == len(calls) - len(bad)
    assert stats["max_batch"] > 1 and stats["batches"] < stats["instances"]  # Ray batched across callers

    # HTTP ingress on 127.0.0.1
    body = json.dumps({"input_ids": instances[0]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{ray_serve}/{mode}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        check_answers([(json.loads(resp.read())["output"]["token_ids"], instances[0])])
    req = urllib.request.Request(f"http://127.0.0.1:{ray_serve}/{mode}", data=b'{"input_ids": [9, 99]}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code == 400 and "outside the vocabulary" in json.loads(err.value.read())["error"]
    serve.delete(mode)


def test_assigned_device_follows_ray_never_device_0_by_assumption() -> None:
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.serving.ray import assigned_device, default_num_gpus

    assert assigned_device([], None) is None and assigned_device([], "0,1") is None
    assert assigned_device(["3"], "3") == 0  # Ray's usual case: only the assigned GPU is visible
    assert assigned_device([2], "0,1,2,3") == 2  # several visible: the assigned GPU's position
    assert assigned_device(["1"], None) == 1  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the id itself
    with pytest.raises(UserInputError, match="CUDA_VISIBLE_DEVICES"):
        assigned_device(["1"], "0")
    if ray.is_initialized():
        assert default_num_gpus() == 1.0  # this module's Ray declares 2 GPUs


def test_instance_batch_mode_needs_the_graph(tiny_bundle: Path) -> None:
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.serving.ray import MuxDeployment

    with pytest.raises(UserInputError, match="--instance-batch"):
        MuxDeployment(str(tiny_bundle), mode="instance_batch")


def _replica_stats(handle: object, replicas: int, tries: int = 60) -> dict[str, dict]:
    """Each replica's stats (stats() lands on one replica per call; call until every replica answered)."""
    seen: dict[str, dict] = {}
    for _ in range(tries):
        s = handle.stats.remote().result(timeout_s=30)
        seen[s["replica"]] = s
        if len(seen) == replicas:
            break
    return seen


def _load(handle: object, instances: list[list[int]], clients: int, on_progress: object = None) -> list[object]:
    """Send every instance once from `clients` threads (one call in flight each); each outcome in order:
    the answer's token ids, or the exception the call raised."""
    outcomes: list[object] = [None] * len(instances)
    next_index = [0]
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(instances):
                return
            try:
                outcomes[i] = handle.predict.remote(instances[i]).result(timeout_s=60)["token_ids"]
            except Exception as exc:
                outcomes[i] = exc
            if on_progress is not None:
                on_progress(i)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes


@pytest.fixture(scope="module")
def two_replicas(ray_serve: int, retrieval_bundle: Path) -> Iterator[object]:
    """A 2-replica deployment (app "two", deployment "muxtwo"), shared by the load and the replica-kill tests."""
    from muxdeploy.serving.ray import mux_app

    app = mux_app(retrieval_bundle, name="muxtwo", num_replicas=2, batch_wait_timeout_s=0.05, device="cpu")
    yield serve.run(app, name="two", route_prefix="/two")
    serve.delete("two")


def test_two_replicas_share_the_load(two_replicas: object) -> None:
    """2 replicas, 16 concurrent callers, 400 instances: every answer is its own; both replicas served."""
    handle = two_replicas
    instances = random_instances(400, seed=21, min_len=3)
    outcomes = _load(handle, instances, clients=16)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    check_answers(list(zip(outcomes, instances, strict=True)), max_slipped=4)
    stats = _replica_stats(handle, 2)
    assert len(stats) == 2 and all(s["instances"] > 0 for s in stats.values()), stats
    assert sum(s["instances"] for s in stats.values()) == 400
    # one (fake) GPU per replica by default on a GPU cluster, each replica pinned to the GPU Ray gave it
    assert sorted(g for s in stats.values() for g in s["gpu_ids"]) == ["0", "1"], stats
    for s in stats.values():
        visible = s["cuda_visible_devices"].split(",")
        assert s["device_id"] == visible.index(s["gpu_ids"][0])
        assert s["instances_per_s"] > 0 and 0 < s["fill_ratio"] <= 1 and s["queue"] == 0


def test_killed_replica_is_replaced_and_no_answer_is_wrong(two_replicas: object) -> None:
    """A replica killed mid-load (ray.kill, no restart): no call gets another call's answer. Ray Serve 2.60
    re-sends a call whose replica died before answering to another replica when its router saw no "accepted"
    mark (handle -> replica calls are gRPC unary), so most in-flight calls still get their answer; the others
    fail with RayActorError and retrying them is the caller's job. Serve then starts a replacement replica."""
    from ray.serve.context import _get_global_client

    handle = two_replicas
    before = set(_replica_stats(handle, 2))
    victim = next(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"] and "muxtwo" in a["name"]
    )
    killed = threading.Event()

    def kill_after(i: int) -> None:
        if i >= 120 and not killed.is_set():
            killed.set()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    instances = random_instances(480, seed=22, min_len=3)
    outcomes = _load(handle, instances, clients=16, on_progress=kill_after)
    assert killed.is_set()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    answers = [(o, inst) for o, inst in zip(outcomes, instances, strict=True) if not isinstance(o, BaseException)]
    check_answers(answers, max_slipped=4)  # no call got another call's answer
    assert len(errors) <= 16, errors[:3]  # only calls in flight on the dead replica (16 callers) may fail
    for e in errors:  # the failures name the dead replica's actor, never a wrong output
        assert isinstance(e, ray.exceptions.RayActorError | serve.exceptions.RequestCancelledError), repr(e)

    # Serve replaces the replica; the deployment answers right afterwards
    deadline = time.monotonic() + 60
    client = _get_global_client()
    while time.monotonic() < deadline:
        status = client.get_serve_status("two").app_status.status
        running = serve.status().applications["two"].deployments["muxtwo"].replica_states.get("RUNNING", 0)
        if status == "RUNNING" and running == 2:
            break
        time.sleep(0.5)
    assert running == 2
    after = random_instances(64, seed=23, min_len=3)
    outcomes = _load(handle, after, clients=8)
    check_answers(list(zip(outcomes, after, strict=True)))
    now: dict[str, dict] = {}
    while len(now) < 2 and time.monotonic() < deadline + 30:  # the handle's router learns of the new replica
        now.update(_replica_stats(handle, 2, tries=10))
    assert len(now) == 2 and set(now) != before  # a new replica took the dead one's place...
    assert sorted(g for s in now.values() for g in s["gpu_ids"]) == ["0", "1"]  # ...on the GPU the dead one freed
