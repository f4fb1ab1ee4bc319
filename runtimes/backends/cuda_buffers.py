"""CUDA memory for GPU backends: pinned host buffers, device buffers, streams, async copies, CUDA graphs.

Two drivers behind one small interface, chosen at run time:
- cuda-python (`from cuda.bindings import runtime as cudart`, 12.6+/13.x; `from cuda import cudart` on
  older 12.x). Every call returns a tuple `(cudaError_t, *values)`; each one is checked here and a
  failure raises CudaError naming the call and `cudaGetErrorString`. Calls used, as in NVIDIA's
  TensorRT samples (samples/python/common_runtime.py) and the cuda-python runtime API docs:
  cudaSetDevice, cudaFree(0) (context init), cudaGetDeviceProperties (.name, .major, .minor),
  cudaStreamCreate / cudaStreamSynchronize / cudaStreamDestroy, cudaMallocHost / cudaFreeHost,
  cudaMalloc / cudaFree, cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyKind.*, stream),
  cudaStreamBeginCapture(stream, cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
  cudaStreamEndCapture(stream) -> graph, cudaGraphInstantiate(graph, 0) -> exec (CUDA 12+ signature),
  cudaGraphLaunch(exec, stream), cudaGraphExecDestroy, cudaGraphDestroy.
- pycuda, when that is what is installed: the device's primary context (the one TensorRT and cudart
  use) is retained and pushed/popped around each use; pagelocked_empty, mem_alloc,
  memcpy_htod_async / memcpy_dtoh_async / memcpy_dtod_async, Stream. (No CUDA graphs through pycuda.)

Nothing here imports a CUDA library at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from muxdeploy.core.errors import MuxError

INSTALL_HINT = (
    "pip install 'muxdeploy[tensorrt]' (cuda-python 12.x) or pip install pycuda; on Jetson pip install "
    "'muxdeploy[jetson]' (cuda-python 12.x, matching JetPack 6's CUDA 12.6)"
)


class CudaError(MuxError):
    """A CUDA call failed; the message names the call and CUDA's error string."""


class CudaUnavailable(MuxError):
    """No CUDA Python binding (cuda-python or pycuda) is installed."""

    exit_code = 2


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6, 13.x
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python 12.x
        except ImportError:
            return None
    return cudart


class CudaPython:
    """The CUDA runtime API through cuda-python, every call checked."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: Any, device_id: int = 0) -> None:
        self.rt = cudart
        self.device_id = device_id
        self._threads: set[int] = set()
        self.call("cudaSetDevice", device_id)
        self.call("cudaFree", 0)  # creates/binds the primary context now, not inside the first timed call

    def call(self, fn: str, *args: Any) -> Any:
        """Run cudart.<fn>(*args); raise CudaError unless it returned cudaSuccess. Returns the value(s)."""
        result = getattr(self.rt, fn)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            try:
                text = self.rt.cudaGetErrorString(err)[1]
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:  # the error string is a courtesy; never mask the real failure
                text = str(err)
            raise CudaError(f"CUDA call {fn} failed: {text} ({err})")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make this device current in the calling thread (once per thread)."""
        tid = threading.get_ident()
        if tid not in self._threads:
            self.call("cudaSetDevice", self.device_id)
            self._threads.add(tid)
        yield

    def properties(self) -> tuple[str, tuple[int, int]]:
        props = self.call("cudaGetDeviceProperties", self.device_id)
        raw = props.name
        name = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return name.split("\x00", 1)[0].strip(), (int(props.major), int(props.minor))

    # streams
    def stream_create(self) -> Any:
        return self.call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_sync(self, stream: Any) -> None:
        self.call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self.call("cudaStreamDestroy", stream)

    # memory
    def host_alloc(self, nbytes: int) -> tuple[Any, np.ndarray]:
        ptr = self.call("cudaMallocHost", nbytes)
        view = np.ctypeslib.as_array(ctypes.cast(int(ptr), ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        return ptr, view

    def host_free(self, handle: Any) -> None:
        self.call("cudaFreeHost", handle)

    def device_alloc(self, nbytes: int) -> tuple[Any, int]:
        ptr = self.call("cudaMalloc", nbytes)
        return ptr, int(ptr)

    def device_free(self, handle: Any) -> None:
        self.call("cudaFree", handle)

    def htod(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", dst, src.ctypes.data, nbytes, kind, stream)

    def dtoh(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", dst.ctypes.data, src, nbytes, kind, stream)

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)

    # graphs
    def capture_begin(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.call("cudaStreamBeginCapture", stream, mode)

    def clear_error(self) -> str | None:
        """Read and reset CUDA's last error (trtexec's "clean up any CUDA error" after a failed capture);
        returns its name, or None when there was none."""
        result = self.rt.cudaGetLastError()
        err = result[0] if isinstance(result, tuple) else result
        return None if err == self.rt.cudaError_t.cudaSuccess else str(err)

    def capture_end(self, stream: Any, instantiate: bool = True) -> Any:
        """End capture and return the executable graph; None when `instantiate` is False (the enqueue failed).

        On any failure the stream has left capture mode, CUDA's last error is cleared (so the next call does
        not report it) and CudaError is raised."""
        try:
            graph = self.call("cudaStreamEndCapture", stream)
        except CudaError:
            self.clear_error()
            raise
        try:
            if not instantiate:
                return None
            try:
                return self.call("cudaGraphInstantiate", graph, 0)
            except CudaError:
                self.clear_error()
                raise
        finally:
            if graph is not None:
                self.call("cudaGraphDestroy", graph)

    def capture_abort(self, stream: Any) -> None:
        """End a failed capture, ignoring errors (the stream must leave capture mode); clears the last error."""
        with contextlib.suppress(Exception):
            result = self.rt.cudaStreamEndCapture(stream)
            if isinstance(result, tuple) and len(result) > 1 and result[1] is not None:
                self.rt.cudaGraphDestroy(result[1])
        self.clear_error()

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self.call("cudaGraphLaunch", graph_exec, stream)

    def graph_destroy(self, graph_exec: Any) -> None:
        self.call("cudaGraphExecDestroy", graph_exec)


class PyCuda:
    """The same interface through pycuda (driver API), on the device's primary context."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self, driver: Any, device_id: int = 0) -> None:
        self.drv = driver
        self.device_id = device_id
        self._guard(driver.init)
        self.ctx = self._guard(driver.Device(device_id).retain_primary_context)

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.drv.Error as exc:
            raise CudaError(f"CUDA call {getattr(fn, '__name__', fn)} failed: {exc}") from None

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def properties(self) -> tuple[str, tuple[int, int]]:
        dev = self.drv.Device(self.device_id)
        major, minor = dev.compute_capability()
        return str(dev.name()), (int(major), int(minor))

    def stream_create(self) -> Any:
        return self._guard(self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_sync(self, stream: Any) -> None:
        self._guard(stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        return None  # freed with the Python object

    def host_alloc(self, nbytes: int) -> tuple[Any, np.ndarray]:
        arr = self._guard(self.drv.pagelocked_empty, nbytes, np.uint8)
        return arr, arr

    def host_free(self, handle: Any) -> None:
        base = getattr(handle, "base", None)  # pagelocked_empty's HostAllocation
        if base is not None and hasattr(base, "free"):
            self._guard(base.free)

    def device_alloc(self, nbytes: int) -> tuple[Any, int]:
        alloc = self._guard(self.drv.mem_alloc, nbytes)
        return alloc, int(alloc)

    def device_free(self, handle: Any) -> None:
        self._guard(handle.free)

    def htod(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        self._guard(self.drv.memcpy_htod_async, dst, src.reshape(-1).view(np.uint8)[:nbytes], stream)

    def dtoh(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        self._guard(self.drv.memcpy_dtoh_async, dst.reshape(-1).view(np.uint8)[:nbytes], src, stream)

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._guard(self.drv.memcpy_dtod_async, dst, src, nbytes, stream)

    def clear_error(self) -> str | None:
        """The driver API has no sticky last error to reset (and pycuda captures no graphs)."""
        return None


CudaLib = CudaPython | PyCuda


def load_cuda(device_id: int = 0, prefer: str | None = None) -> CudaLib:
    """cuda-python when importable (or `prefer="pycuda"`), else pycuda; CudaUnavailable when neither is."""
    if prefer != "pycuda":
        cudart = _import_cudart()
        if cudart is not None:
            return CudaPython(cudart, device_id)
    try:
        import pycuda.driver as drv
    except ImportError:
        raise CudaUnavailable(f"no CUDA Python binding is installed; {INSTALL_HINT}") from None
    return PyCuda(drv, device_id)


def device_properties(device_id: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of a device."""
    return load_cuda(device_id).properties()


class PinnedBuffer:
    """Page-locked host memory of `nbytes`, viewable as any dtype/shape that fits."""

    def __init__(self, cuda: CudaLib, nbytes: int) -> None:
        self.cuda = cuda
        self.nbytes = int(nbytes)
        self._handle, self._bytes = cuda.host_alloc(self.nbytes)

    def view(self, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the first bytes as `dtype` with `shape` (no copy)."""
        dtype = np.dtype(dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        if need > self.nbytes:
            raise CudaError(f"pinned buffer of {self.nbytes} bytes cannot hold {shape} {dtype} ({need} bytes)")
        return self._bytes[:need].view(dtype).reshape(shape)

    def free(self) -> None:
        if self._handle is not None:
            self.cuda.host_free(self._handle)
            self._handle = None


class DeviceBuffer:
    """Device memory of `nbytes`; `ptr` is the address TensorRT's set_tensor_address takes."""

    def __init__(self, cuda: CudaLib, nbytes: int) -> None:
        self.cuda = cuda
        self.nbytes = int(nbytes)
        self._handle, self.ptr = cuda.device_alloc(self.nbytes)

    def free(self) -> None:
        if self._handle is not None:
            self.cuda.device_free(self._handle)
            self._handle = None


class Stream:
    """A CUDA stream with checked async copies between pinned host views and device buffers."""

    def __init__(self, cuda: CudaLib) -> None:
        self.cuda = cuda
        self._stream = cuda.stream_create()

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        """The integer cudaStream_t (what execute_async_v3 takes)."""
        return self.cuda.stream_handle(self._stream)

    def upload(self, dst: DeviceBuffer, src: np.ndarray) -> None:
        """Async copy of a pinned host array into the start of `dst`."""
        if src.nbytes > dst.nbytes:
            raise CudaError(f"copy of {src.nbytes} bytes does not fit device buffer of {dst.nbytes}")
        self.cuda.htod(dst.ptr, src, src.nbytes, self._stream)

    def download(self, dst: np.ndarray, src: DeviceBuffer) -> None:
        """Async copy of the start of `src` into a pinned host array."""
        if dst.nbytes > src.nbytes:
            raise CudaError(f"copy of {dst.nbytes} bytes exceeds device buffer of {src.nbytes}")
        self.cuda.dtoh(dst, src.ptr, dst.nbytes, self._stream)

    def copy(self, dst: DeviceBuffer, src: DeviceBuffer, nbytes: int) -> None:
        """Async device-to-device copy."""
        if nbytes > min(dst.nbytes, src.nbytes):
            raise CudaError(f"device copy of {nbytes} bytes exceeds a buffer ({src.nbytes} -> {dst.nbytes})")
        self.cuda.dtod(dst.ptr, src.ptr, nbytes, self._stream)

    def synchronize(self) -> None:
        self.cuda.stream_sync(self._stream)

    def destroy(self) -> None:
        if self._stream is not None:
            self.cuda.stream_destroy(self._stream)
            self._stream = None
