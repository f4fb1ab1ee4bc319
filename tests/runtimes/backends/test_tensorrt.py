"""TensorRT backend on a real GPU with a real engine built from the tiny bundle's ONNX.

Skipped without TensorRT and a GPU (this workplace has neither). On a GPU machine:
    pip install tensorrt cuda-python   # or JetPack's TensorRT on a Jetson
    MUXDEPLOY_FORCE_GPU_TESTS=1 python -m pytest -q -m gpu tests/runtimes/backends
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import BackendError, UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends.cuda_buffers import device_properties
from muxdeploy.runtimes.runtime import MuxRuntime

ENGINE = "engine.fp32.plan"
# skip before any fixture runs (the lent H100 has cuda-python but no TensorRT)
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT not installed")


def build_engine(bundle: Path, max_batch: int = 8) -> None:
    """Build an FP32 engine with an optimization profile over B and record it with this machine's facts."""
    trt = pytest.importorskip("tensorrt")
    manifest = Manifest.load(bundle)
    n, length = manifest.num_instances, manifest.seq_len
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(bundle / "model.onnx"))
    assert parsed, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(manifest.input_name, (1, n, length), (max_batch // 2, n, length), (max_batch, n, length))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    (bundle / ENGINE).write_bytes(bytes(plan))
    name, (major, minor) = device_properties(0)
    manifest.add_artifact(
        ENGINE,
        "tensorrt",
        "fp32",
        tensorrt_version=trt.__version__,
        gpu_name=name,
        compute_capability=f"{major}.{minor}",
        max_batch=max_batch,
    )
    manifest.save()


@pytest.fixture(scope="module")
def engine_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    out = tmp_path_factory.mktemp("trt") / "mux_model"
    shutil.copytree(tiny_bundle, out)
    build_engine(out)
    return out


def instances(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 1000, size=int(rng.integers(1, 20))).tolist() for _ in range(count)]


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_tensorrt_matches_onnxruntime(engine_bundle: Path, cuda_graphs: bool) -> None:
    data = instances(45)
    with MuxRuntime(engine_bundle, backend="onnxruntime-cpu") as rt:
        want = np.stack([r["logits"] for r in rt.predict(data)])
    with MuxRuntime(engine_bundle, backend="tensorrt", cuda_graphs=cuda_graphs, max_batch=4) as rt:
        assert rt.backend_name == f"tensorrt fp32 ({ENGINE})"
        for _ in range(2):  # the second pass replays captured graphs
            got = np.stack([r["logits"] for r in rt.predict(data)])
            np.testing.assert_allclose(got, want, atol=1e-3)
    with MuxRuntime(engine_bundle) as rt:  # auto picks the engine when TensorRT imports and it fits
        assert rt.backend_name.startswith("tensorrt")


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_workers_each_with_their_own_context(engine_bundle: Path) -> None:
    data = instances(400, seed=1)
    with MuxRuntime(engine_bundle, backend="tensorrt", workers=2, max_wait_ms=1) as rt:
        futures: list = [None] * len(data)

        def produce(k: int) -> None:
            for i in range(k, len(data), 8):
                futures[i] = rt.submit(data[i])

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(f.result(30)["logits"].shape == (3,) for f in futures)
        assert rt.metrics()["nv_inference_request_success"] == 400


@pytest.mark.gpu
@needs_tensorrt
def test_garbage_with_a_matching_sha_is_refused_by_tensorrt(engine_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(engine_bundle, bundle)
    (bundle / ENGINE).write_bytes(os.urandom(4096))
    manifest = Manifest.load(bundle)
    facts = {k: v for k, v in manifest.artifacts[ENGINE].items() if k not in ("format", "precision", "sha256")}
    manifest.add_artifact(ENGINE, "tensorrt", "fp32", **facts)  # records the garbage's sha256
    manifest.save()
    with pytest.raises(BackendError, match="is not a TensorRT plan this machine can load"):
        MuxRuntime(bundle, backend="tensorrt")


@pytest.mark.gpu
@needs_tensorrt
def test_engine_recorded_for_another_tensorrt_is_named(engine_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(engine_bundle, bundle)
    manifest = Manifest.load(bundle)
    manifest.artifacts[ENGINE]["tensorrt_version"] = "9.0.0"
    manifest.save()
    with pytest.raises(UserInputError, match=r"built with TensorRT 9\.0\.0"):
        MuxRuntime(bundle, backend="tensorrt")
    with MuxRuntime(bundle) as rt:  # auto skips the stale engine
        assert rt.backend_name.startswith("onnxruntime")


def _record_built_engine(bundle: Path, name: str, opts_kwargs: dict) -> None:
    """Build `name` with the one builder code path (exporters/tensorrt.py) and record it in the manifest."""
    pytest.importorskip("tensorrt")
    from muxdeploy.exporters.tensorrt import EngineOptions, build_engine, load_trt

    manifest = Manifest.load(bundle)
    facts = build_engine(bundle / "model.onnx", bundle / name, EngineOptions(**opts_kwargs), api=load_trt("tensorrt"))
    manifest.add_artifact(name, "tensorrt", "fp32", **facts)
    manifest.save()


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_fixed_batch_engine_pads_partial_batches(tiny_bundle: Path, tmp_path: Path, cuda_graphs: bool) -> None:
    """Review #1/#2: an engine whose profile is one size (as DLA engines are) runs batches below it, padded."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    _record_built_engine(bundle, ENGINE, {"min_batch": 4, "opt_batch": 4, "max_batch": 4})
    data = instances(4 * 4 * 3 + 5)  # full batches of 4 groups and a partial one
    with MuxRuntime(bundle, backend="onnxruntime-cpu") as rt:
        want = np.stack([r["logits"] for r in rt.predict(data)])
    with MuxRuntime(bundle, backend="tensorrt", cuda_graphs=cuda_graphs) as rt:
        for count in (1, 5, 9, len(data)):  # 1, 2, 3 groups and several batches
            got = np.stack([r["logits"] for r in rt.predict(data[:count])])
            np.testing.assert_allclose(got, want[:count], atol=1e-3)


@pytest.mark.gpu
@needs_tensorrt
def test_workers_share_one_engine(engine_bundle: Path) -> None:
    """Review #8: one deserialized engine per process, one execution context per worker."""
    from muxdeploy.runtimes.backends.tensorrt import SharedEngine

    with MuxRuntime(engine_bundle, backend="tensorrt", workers=3, max_wait_ms=1) as rt:
        futures = [rt.submit(x) for x in instances(64, seed=2)]
        assert all(f.result(30)["logits"].shape == (3,) for f in futures)
        engines = [e for key, e in SharedEngine._registry.items() if key[0].endswith(ENGINE)]
        assert len(engines) == 1 and engines[0].users >= 3  # the predict backend and the three workers
    assert not [key for key in SharedEngine._registry if key[0].endswith(ENGINE)]  # freed with the last user


def test_every_tensorrt_name_the_backend_uses_exists_in_tensorrt_rtx() -> None:
    """CI has TensorRT-RTX (same runtime API as TensorRT 10/11) but no GPU: the names the backend calls must exist."""
    import importlib
    import importlib.util

    from muxdeploy.runtimes.backends.engine_facts import TRT_FLAVORS

    names = [m for m in TRT_FLAVORS["tensorrt-rtx"] if importlib.util.find_spec(m)]
    if not names:
        pytest.skip("TensorRT-RTX not installed (pip install -e '.[tensorrt-rtx]')")
    trt = importlib.import_module(names[0])
    used = {
        trt.Runtime: ("DLA_core", "engine_host_code_allowed", "deserialize_cuda_engine"),
        trt.ICudaEngine: (
            "num_io_tensors",
            "get_tensor_name",
            "get_tensor_mode",
            "get_tensor_dtype",
            "get_tensor_shape",
            "get_tensor_profile_shape",
            "create_execution_context",
            "get_device_memory_size_for_profile_v2",
        ),
        trt.IExecutionContext: (
            "set_tensor_address",
            "set_input_shape",
            "get_tensor_shape",
            "execute_async_v3",
            "set_device_memory",
            "update_device_memory_size_for_shapes",
        ),
        trt.ExecutionContextAllocationStrategy: ("USER_MANAGED",),
        trt.TensorIOMode: ("INPUT",),
        trt.ILogger.Severity: ("ERROR", "INTERNAL_ERROR", "VERBOSE"),
    }
    missing = [
        f"{owner.__name__}.{name}" for owner, names in used.items() for name in names if not hasattr(owner, name)
    ]
    assert missing == [] and callable(trt.nptype)
    from muxdeploy.runtimes.backends.tensorrt import shared_logger

    logger = shared_logger(trt)
    assert shared_logger(trt) is logger  # one logger per module per process (review #16)
    with logger.capture() as lines:
        logger.log(trt.ILogger.Severity.ERROR, "boom")
        logger.log(trt.ILogger.Severity.INFO, "[GpuLayer] SOFTMAX: x")
    assert logger.errors == ["boom"] and lines == ["boom", "[GpuLayer] SOFTMAX: x"]
