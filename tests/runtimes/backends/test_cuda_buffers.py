"""CUDA buffers on a real GPU: pinned host -> device -> device -> pinned host on one stream, errors checked.

Run on a GPU machine with cuda-python (or pycuda) installed:
    MUXDEPLOY_FORCE_GPU_TESTS=1 python -m pytest -q -m gpu tests/runtimes/backends
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from muxdeploy.runtimes.backends.cuda_buffers import (
    CudaError,
    DeviceBuffer,
    PinnedBuffer,
    Stream,
    device_properties,
    load_cuda,
)

HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None
DRIVERS = [
    pytest.param("cuda-python", marks=pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="no cuda-python")),
    pytest.param("pycuda", marks=pytest.mark.skipif(not HAS_PYCUDA, reason="no pycuda")),
]


def test_cuda_python_is_pinned_to_the_cuda_the_extra_targets() -> None:
    """Review #7: an unpinned cuda-python resolves to 13.x, whose first cudaSetDevice fails on JetPack 6's CUDA 12.6."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra, major in (("jetson", 12), ("tensorrt", 12), ("tensorrt-cu13", 13)):
        (spec,) = [Requirement(r).specifier for r in extras[extra] if Requirement(r).name == "cuda-python"]
        assert f"{major}.6.0" in spec and f"{major + 1}.0.0" not in spec, (extra, str(spec))
        assert any(re.fullmatch(rf"<\s*{major + 1}(\.0)*", str(s)) for s in spec), (extra, str(spec))
    trt = [Requirement(r) for r in extras["tensorrt"] if Requirement(r).name.startswith("tensorrt")]
    assert [r.name for r in trt] == ["tensorrt-cu12"]  # the CUDA 12 build, as cuda-python 12.x


@pytest.mark.gpu
@pytest.mark.parametrize("driver", DRIVERS)
def test_round_trip_through_pinned_and_device_memory(driver: str) -> None:
    cuda = load_cuda(0, prefer=driver)
    assert cuda.name == driver
    data = np.random.default_rng(0).standard_normal((257, 37)).astype(np.float32)
    with cuda.current():
        h_in, h_out = PinnedBuffer(cuda, data.nbytes + 64), PinnedBuffer(cuda, data.nbytes)
        d_a, d_b = DeviceBuffer(cuda, data.nbytes), DeviceBuffer(cuda, data.nbytes + 128)
        stream = Stream(cuda)
        try:
            src = h_in.view(np.float32, data.shape)
            np.copyto(src, data)
            dst = h_out.view(np.float32, data.shape)
            dst.fill(0)
            stream.upload(d_a, src)
            stream.copy(d_b, d_a, data.nbytes)
            stream.download(dst, d_b)
            stream.synchronize()
            np.testing.assert_array_equal(dst, data)
            assert isinstance(stream.handle, int)
            with pytest.raises(CudaError, match="does not fit"):
                stream.upload(d_a, h_in.view(np.uint8, (data.nbytes + 64,)))
        finally:
            stream.destroy()
            for buf in (h_in, h_out, d_a, d_b):
                buf.free()


@pytest.mark.gpu
def test_failed_cuda_call_is_one_clear_error() -> None:
    cuda = load_cuda(0)
    with cuda.current(), pytest.raises(CudaError, match="failed"):
        DeviceBuffer(cuda, 1 << 60)  # no GPU has an exabyte
    name, (major, minor) = device_properties(0)
    assert name and major >= 5 and minor >= 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="no cuda-python")
def test_cuda_graph_capture_of_copies_replays() -> None:
    cuda = load_cuda(0, prefer="cuda-python")
    data = np.arange(1024, dtype=np.int32)
    with cuda.current():
        h, out = PinnedBuffer(cuda, data.nbytes), PinnedBuffer(cuda, data.nbytes)
        a, b = DeviceBuffer(cuda, data.nbytes), DeviceBuffer(cuda, data.nbytes)
        stream = Stream(cuda)
        try:
            np.copyto(h.view(np.int32, data.shape), data)
            stream.upload(a, h.view(np.int32, data.shape))
            stream.synchronize()
            cuda.capture_begin(stream.raw)
            stream.copy(b, a, data.nbytes)
            graph = cuda.capture_end(stream.raw)
            cuda.graph_launch(graph, stream.raw)
            stream.download(out.view(np.int32, data.shape), b)
            stream.synchronize()
            np.testing.assert_array_equal(out.view(np.int32, data.shape), data)
            cuda.graph_destroy(graph)
        finally:
            stream.destroy()
            for buf in (h, out, a, b):
                buf.free()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="no cuda-python")
def test_failed_capture_leaves_no_stale_cuda_error() -> None:
    """Review #6: a capture that fails must not leave CUDA's last error set for the next, unrelated call."""
    cuda = load_cuda(0, prefer="cuda-python")
    data = np.arange(256, dtype=np.float32)
    with cuda.current():
        h = PinnedBuffer(cuda, data.nbytes)
        d = DeviceBuffer(cuda, data.nbytes)
        stream = Stream(cuda)
        try:
            cuda.capture_begin(stream.raw)
            with pytest.raises(CudaError, match="cudaStreamSynchronize"):
                stream.synchronize()  # not allowed while capturing: invalidates the capture
            with pytest.raises(CudaError, match="cudaStreamEndCapture"):
                cuda.capture_end(stream.raw)
            assert cuda.clear_error() is None  # capture_end already cleared it
            np.copyto(h.view(np.float32, data.shape), data)  # the stream works as before
            stream.upload(d, h.view(np.float32, data.shape))
            h.view(np.float32, data.shape).fill(0)
            stream.download(h.view(np.float32, data.shape), d)
            stream.synchronize()
            np.testing.assert_array_equal(h.view(np.float32, data.shape), data)
        finally:
            stream.destroy()
            h.free()
            d.free()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="no cuda-python")
def test_capture_whose_enqueue_failed_is_not_instantiated() -> None:
    """Review #6: when the captured enqueue reported failure, the graph is ended and dropped, not instantiated."""
    cuda = load_cuda(0, prefer="cuda-python")
    with cuda.current():
        a, b = DeviceBuffer(cuda, 4096), DeviceBuffer(cuda, 4096)
        stream = Stream(cuda)
        try:
            cuda.capture_begin(stream.raw)
            stream.copy(b, a, 4096)
            assert cuda.capture_end(stream.raw, instantiate=False) is None
            stream.synchronize()  # the stream has left capture mode
            assert cuda.clear_error() is None
        finally:
            stream.destroy()
            a.free()
            b.free()
