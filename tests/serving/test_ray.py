"""Ray Serve deployment: concurrent single instances batched by @serve.batch, each answered with its own result.

Needs `ray[serve]` (skips without it). Ray stays on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps
it from swapping 127.0.0.1 for the machine's address, and the HTTP proxy listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import check_answers, random_instances

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the Ray Serve deployment needs ray[serve]: pip install 'ray[serve]'")
serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[int]:
    """A local Ray with Serve's HTTP proxy on 127.0.0.1; yields the HTTP port."""
    port = _free_port()
    ray.init(
        num_cpus=2,
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

    app = mux_app(retrieval_bundle, name=f"mux_{mode}", mode=mode, batch_wait_timeout_s=0.05)
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


def test_instance_batch_mode_needs_the_graph(tiny_bundle: Path) -> None:
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.serving.ray import MuxDeployment

    with pytest.raises(UserInputError, match="--instance-batch"):
        MuxDeployment(str(tiny_bundle), mode="instance_batch")
