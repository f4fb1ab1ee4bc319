"""GPU: the Ray deployment places one replica per real GPU and runs its onnxruntime CUDA session on that GPU.

Needs an NVIDIA GPU, ray[serve] and onnxruntime with the CUDA provider (onnxruntime-gpu). One replica per GPU
Ray finds; every answer under concurrent load is checked against its own request (retrieval oracle).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import check_answers, random_instances

pytestmark = pytest.mark.gpu
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the Ray Serve deployment needs ray[serve]: pip install 'muxdeploy[ray]'")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def gpu_ray() -> Iterator[int]:
    """A local Ray on 127.0.0.1 with the GPUs it detects; yields their number."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        ray.shutdown()
        pytest.skip("Ray found no GPU")
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    yield gpus
    serve.shutdown()
    ray.shutdown()


@pytest.mark.parametrize("mode", ["instance_batch", "packer"])
def test_one_replica_per_gpu_on_its_own_gpu(gpu_ray: int, retrieval_bundle: Path, mode: str) -> None:
    from muxdeploy.serving.ray import mux_app

    app = mux_app(retrieval_bundle, name=f"gpu_{mode}", mode=mode, num_replicas=gpu_ray, batch_wait_timeout_s=0.01)
    handle = serve.run(app, name=f"gpu_{mode}", route_prefix=f"/gpu_{mode}")  # num_gpus defaults to 1 here
    instances = random_instances(256, seed=31, min_len=3)
    outcomes: list[object] = [None] * len(instances)

    def client(k: int) -> None:
        for i in range(k, len(instances), 16):
            outcomes[i] = handle.predict.remote(instances[i]).result(timeout_s=60)["token_ids"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check_answers(list(zip(outcomes, instances, strict=True)), max_slipped=4)
    seen: dict[str, dict] = {}
    for _ in range(20 * gpu_ray):
        s = handle.stats.remote().result(timeout_s=30)
        seen[s["replica"]] = s
        if len(seen) == gpu_ray:
            break
    assert len({g for s in seen.values() for g in s["gpu_ids"]}) == gpu_ray  # one GPU each, all different
    for s in seen.values():
        assert s["device_id"] == s["cuda_visible_devices"].split(",").index(s["gpu_ids"][0])
        assert "CUDA" in s["backend"] or "cuda" in s["backend"] or "tensorrt" in s["backend"], s
    serve.delete(f"gpu_{mode}")
