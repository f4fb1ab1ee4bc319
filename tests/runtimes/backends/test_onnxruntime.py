"""onnxruntime backend: provider choice, feed checks, and CUDA with I/O binding on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muxdeploy.core.errors import BackendError, UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends import TensorSpec
from muxdeploy.runtimes.backends.onnxruntime import (
    CPU,
    CUDA,
    OnnxRuntimeBackend,
    choose_providers,
    cuda_available,
    make_session,
)
from muxdeploy.runtimes.runtime import MuxRuntime


def backend_for(bundle: Path, device: str = "cpu") -> OnnxRuntimeBackend:
    m = Manifest.load(bundle)
    return OnnxRuntimeBackend(
        bundle / "model.onnx",
        TensorSpec.from_manifest(m.data["inputs"][0]),
        TensorSpec.from_manifest(m.data["outputs"][0]),
        m.max_batch,
        device=device,
        intra_op_threads=1,
    )


def test_provider_choice() -> None:
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(UserInputError, match="no CUDA provider"):
        choose_providers("cuda", [CPU])


def test_base_checks_every_feed_once_for_all_backends(tiny_bundle: Path) -> None:
    with backend_for(tiny_bundle) as b:
        assert b.infer(np.zeros((3, 4, 16), np.int32)).shape == (3, 4, 3)
        with pytest.raises(BackendError, match="must be int32, got int64"):
            b.infer(np.zeros((3, 4, 16), np.int64))
        with pytest.raises(BackendError, match=r"shape \[B, 4, 16\], got \[3, 4, 15\]"):
            b.infer(np.zeros((3, 4, 15), np.int32))
        with pytest.raises(BackendError, match=r"outside 1\.\.8"):
            b.infer(np.zeros((9, 4, 16), np.int32))
    with pytest.raises(BackendError, match="not active"):
        b.infer(np.zeros((1, 4, 16), np.int32))


def test_unreadable_model_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    b = backend_for(tiny_bundle)
    b.model_path = bad
    with pytest.raises(BackendError, match=r"onnxruntime cannot load .*model\.onnx"):
        b.activate()


def test_make_session_applies_its_options(tiny_bundle: Path) -> None:
    import onnxruntime as ort

    session = make_session(tiny_bundle / "model.onnx", intra_op_threads=2, graph_optimization="extended")
    opts = session.get_session_options()
    assert session.get_providers() == [CPU]
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (2, 1, 3)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert session.run(None, {"input_ids": np.zeros((2, 4, 16), np.int32)})[0].shape == (2, 4, 3)
    default = make_session(tiny_bundle / "model.onnx").get_session_options()
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert default.intra_op_num_threads == 0  # onnxruntime's own choice: all cores


def test_make_session_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(BackendError, match=r"onnxruntime cannot load .*model\.onnx: .*; re-export the bundle") as err:
        make_session(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="unknown onnxruntime graph optimization level 'fast'"):
        make_session(bad, graph_optimization="fast")
    with pytest.raises(UserInputError, match="unknown onnxruntime device 'tpu'"):
        make_session(bad, device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="onnxruntime-gpu (CUDA provider) not installed")
def test_cuda_provider_with_io_binding_matches_cpu(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    data = [rng.integers(5, 1000, size=int(rng.integers(1, 17))).tolist() for _ in range(70)]
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cpu") as rt:
        want = np.stack([r["logits"] for r in rt.predict(data)])
    with MuxRuntime(tiny_bundle, backend="onnxruntime-cuda", workers=2) as rt:
        assert rt.backend_name.startswith("onnxruntime-cuda")
        got = np.stack([r["logits"] for r in rt.predict(data)])
        futures = [rt.submit(x) for x in data]
        via_submit = [f.result(30) for f in futures]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(via_submit) == 70


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="onnxruntime-gpu (CUDA provider) not installed")
def test_cuda_graphs_per_bucket_match_cpu(bundle_copy: Path) -> None:
    """The fused FP16 ORT artifact (EmbedLayerNormalization, Attention) replayed as one CUDA graph per batch
    bucket: every batch size, full or padded to its bucket, answers as the FP32 graph on the CPU does."""
    from muxdeploy.build import BuildRequest, run_build

    run_build(
        BuildRequest(bundle_copy, precisions=["fp16"], backend="onnxruntime", bench_seconds=0), echo=lambda _: None
    )
    rng = np.random.default_rng(1)
    with MuxRuntime(bundle_copy, backend="onnxruntime-cpu", precision="fp32") as cpu:
        with MuxRuntime(bundle_copy, backend="onnxruntime-cuda") as gpu:
            assert gpu.selection.artifact == "model.fp16.ort.onnx"
            backend = gpu._backend
            for m in (1, 3, 4, 9, 13, 21, 32, 5, 32):  # 1..8 groups: buckets 1, 2, 4, 8, some padded, reused
                ids = rng.integers(5, 1000, size=(m, 16))
                want = cpu.predict_array(ids)
                got = gpu.predict_array(ids)
                np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
                assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
            assert backend.uses_cuda_graphs, backend.cuda_graph_error
