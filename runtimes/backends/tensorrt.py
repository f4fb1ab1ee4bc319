"""TensorRT backend: deserialize a plan, one execution context + one CUDA stream + pinned buffers per instance.

NOT EXECUTED in this workplace (no TensorRT here). Written against the TensorRT 10.x Python API and
checked name by name against NVIDIA's docs and samples:
- docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
  (IExecutionContext.set_input_shape, set_tensor_address, execute_async_v3(stream_handle) -> bool)
- NVIDIA/TensorRT samples/python/common_runtime.py (trt.Runtime(logger).deserialize_cuda_engine(bytes),
  engine.num_io_tensors, engine.get_tensor_name(i), engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
  engine.get_tensor_dtype(name) with trt.nptype, engine.get_tensor_profile_shape(name, profile) -> (min, opt, max),
  cudart.cudaMallocHost/cudaMalloc/cudaMemcpyAsync/cudaStreamSynchronize)
- trt.ILogger subclassing (ILogger.__init__(self) then log(severity, msg)); trt.Runtime.engine_host_code_allowed
  (needed to deserialize version-compatible plans that embed the lean runtime); engine.create_execution_context().
Plans built with TensorRT for RTX (manifest "tensorrt_module": "tensorrt_rtx") are run through that module,
whose runtime API has the same names.
CUDA graphs: execute once after set_input_shape (flushes deferred shape work), then capture execute_async_v3
on the stream in thread-local mode, instantiate, and replay per batch size; a capture failure falls back to
plain execution for that shape.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import BackendError
from muxdeploy.runtimes.backends.base import Backend, TensorSpec, import_optional
from muxdeploy.runtimes.backends.cuda_buffers import CudaError, DeviceBuffer, PinnedBuffer, Stream, load_cuda
from muxdeploy.runtimes.backends.engine_facts import engine_module

INSTALL_HINT = (
    "pip install 'muxdeploy[tensorrt]' (tensorrt + cuda-python); on Jetson use JetPack's TensorRT "
    "(apt install python3-libnvinfer) and pip install cuda-python"
)


def _make_logger(trt: Any) -> Any:
    """A trt.ILogger that keeps the errors TensorRT reports, so failures can quote them."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())

    return _Logger()


def describe_plan(facts: dict[str, Any]) -> str:
    """'TensorRT 10.3.0 on Orin (compute capability 8.7)' from an engine's manifest facts."""
    cc = facts.get("compute_capability")
    cc_text = ".".join(map(str, cc)) if isinstance(cc, (list, tuple)) else cc
    parts = [f"TensorRT {facts.get('tensorrt_version', '?')}"]
    if facts.get("gpu_name") or cc_text:
        parts.append(f"on {facts.get('gpu_name', 'a GPU')} (compute capability {cc_text or '?'})")
    return " ".join(parts)


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT plan. Buffers are sized for max_batch once; addresses are set once."""

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        input_spec: TensorSpec,
        output_spec: TensorSpec,
        max_batch: int,
        facts: dict[str, Any] | None = None,
        cuda_graphs: bool = False,
        device_id: int = 0,
    ) -> None:
        super().__init__(input_spec, output_spec, max_batch)
        self.engine_path = Path(engine_path)
        self.facts = dict(facts or {})
        self.use_graphs = cuda_graphs
        self.device_id = device_id
        self._graphs: dict[int, Any] = {}
        self._lock = threading.Lock()

    # ---- activate ------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        trt = import_optional(engine_module(self.facts), INSTALL_HINT)
        self.trt = trt
        self.cuda = load_cuda(self.device_id)
        with self.cuda.current():
            self.logger = _make_logger(trt)
            self.runtime = trt.Runtime(self.logger)
            if self.facts.get("version_compatible"):
                self.runtime.engine_host_code_allowed = True
            try:
                self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            except Exception as exc:  # some TensorRT versions raise instead of returning None
                self.logger.errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                self.engine = None
            if self.engine is None:
                raise BackendError(self._deserialize_error())
            self._check_io()
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise BackendError(
                    f"TensorRT could not create an execution context for {self.engine_path} "
                    f"({self._first_error()}); free GPU memory or use fewer workers"
                )
            self.stream = Stream(self.cuda)
            b = self.max_batch
            in_bytes = b * int(np.prod(self.input_spec.shape)) * self.input_spec.dtype.itemsize
            out_bytes = b * int(np.prod(self.output_spec.shape)) * self.out_dtype.itemsize
            self.h_in, self.d_in = PinnedBuffer(self.cuda, in_bytes), DeviceBuffer(self.cuda, in_bytes)
            self.h_out, self.d_out = PinnedBuffer(self.cuda, out_bytes), DeviceBuffer(self.cuda, out_bytes)
            for name, buf in ((self.input_spec.name, self.d_in), (self.output_spec.name, self.d_out)):
                if not self.context.set_tensor_address(name, buf.ptr):
                    raise BackendError(f"TensorRT refused the buffer address for {name!r}: {self._first_error()}")
            self._shape_b = 0

    def _first_error(self) -> str:
        return self.logger.errors[0] if getattr(self, "logger", None) and self.logger.errors else "no detail logged"

    def _deserialize_error(self) -> str:
        have = getattr(self.trt, "__version__", "?")
        try:
            gpu_name, cc = self.cuda.properties()
            here = f"TensorRT {have} on {gpu_name} (compute capability {cc[0]}.{cc[1]})"
        except CudaError:
            here = f"TensorRT {have}"
        return (
            f"{self.engine_path} is not a TensorRT plan this machine can load ({self._first_error()}); "
            f"it was built with {describe_plan(self.facts)}, this machine has {here}; "
            "rebuild it here with `muxdeploy build-engine`"
        )

    def _check_io(self) -> None:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [self.input_spec.name] or self.output_spec.name not in outputs:
            raise BackendError(
                f"{self.engine_path} has inputs {inputs} and outputs {outputs}; the manifest expects "
                f"{self.input_spec.name!r} -> {self.output_spec.name!r}. Rebuild the engine from this bundle's ONNX"
            )
        in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_spec.name)))
        if in_dtype != self.input_spec.dtype:
            want = self.input_spec.dtype
            raise BackendError(f"{self.engine_path} takes {in_dtype}, the manifest says {want}; rebuild it")
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_spec.name)))
        profile_max = tuple(int(d) for d in engine.get_tensor_profile_shape(self.input_spec.name, 0)[2])
        if tuple(profile_max[1:]) != self.input_spec.shape:
            raise BackendError(
                f"{self.engine_path} was built for input shape {tuple(profile_max)}, the manifest says "
                f"[B, {', '.join(map(str, self.input_spec.shape))}]; rebuild the engine from this bundle"
            )
        self.max_batch = min(self.max_batch, int(profile_max[0]))

    # ---- infer ---------------------------------------------------------------------------------
    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        b = feed.shape[0]
        out_shape = (b, *self.output_spec.shape)
        with self._lock, self.cuda.current():
            host_in = self.h_in.view(feed.dtype, feed.shape)
            np.copyto(host_in, feed)
            host_out = self.h_out.view(self.out_dtype, out_shape)
            self.stream.upload(self.d_in, host_in)
            graph = self._graph_for(b) if self.use_graphs else None
            if graph is not None:
                self.cuda.graph_launch(graph, self.stream.raw)
            else:
                self._set_batch(b)
                if not self.context.execute_async_v3(self.stream.handle):
                    raise BackendError(f"TensorRT execution failed on a batch of {b}: {self._first_error()}")
            self.stream.download(host_out, self.d_out)
            self.stream.synchronize()
            return host_out.astype(np.float32) if self.out_dtype != np.float32 else host_out.copy()

    def _set_batch(self, b: int) -> None:
        if self._shape_b != b:
            if not self.context.set_input_shape(self.input_spec.name, (b, *self.input_spec.shape)):
                why = self._first_error()
                raise BackendError(f"TensorRT rejected batch size {b} (allowed 1..{self.max_batch}): {why}")
            self._shape_b = b

    def _graph_for(self, b: int) -> Any:
        """The CUDA graph for batch size b, captured on first use; None when capture is not possible."""
        if b in self._graphs:
            return self._graphs[b]
        graph = None
        if getattr(self.cuda, "supports_graphs", False):
            self._set_batch(b)
            if not self.context.execute_async_v3(self.stream.handle):  # flush deferred shape-dependent work
                raise BackendError(f"TensorRT execution failed on a batch of {b}: {self._first_error()}")
            self.stream.synchronize()
            try:
                self.cuda.capture_begin(self.stream.raw)
                ok = self.context.execute_async_v3(self.stream.handle)
                graph = self.cuda.capture_end(self.stream.raw)
                if not ok:
                    self.cuda.graph_destroy(graph)
                    graph = None
            except CudaError:
                self.cuda.capture_abort(self.stream.raw)
                graph = None
        self._graphs[b] = graph
        return graph

    # ---- deactivate ----------------------------------------------------------------------------
    def _deactivate_impl(self) -> None:
        with self.cuda.current():
            for graph in self._graphs.values():
                if graph is not None:
                    self.cuda.graph_destroy(graph)
            self._graphs.clear()
            for name in ("h_in", "d_in", "h_out", "d_out"):
                buf = getattr(self, name, None)
                if buf is not None:
                    buf.free()
            if getattr(self, "stream", None) is not None:
                self.stream.destroy()
            self.context = None
            self.engine = None
            self.runtime = None
