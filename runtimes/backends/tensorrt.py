"""TensorRT backend: one deserialized engine per process, an execution context, stream and buffers per worker.

NOT EXECUTED in this workplace (no TensorRT with a GPU here; docs/RUNTIME.md says what ran where). Written
against the TensorRT 10.x/11.x and TensorRT-RTX Python APIs and checked name by name (docs/PRECISION.md,
"TensorRT review"):
- one `trt.Runtime` and one `ICudaEngine` per plan file and device, shared by every worker of the process
  (`SharedEngine`, reference-counted): N workers hold one copy of the weights, and a DLA core holds one
  loadable however many workers there are. `runtime.DLA_core` is set from the manifest before deserializing.
- one `trt.ILogger` per TensorRT module per process (`shared_logger`): TensorRT keeps one logger pointer, so
  per-object loggers lose messages; errors are kept per thread, so a worker quotes its own.
- per worker: execution contexts created with `ExecutionContextAllocationStrategy.USER_MANAGED`, each with device
  memory allocated here for its batch (`update_device_memory_size_for_shapes`; TensorRT-RTX captures graphs
  only with user-allocated memory); every I/O tensor gets an address (extra engine outputs too).
- batches below the profile minimum (a DLA engine's fixed batch, or --min-batch) are padded up to it with
  copies of the first group, and the padding's outputs dropped.
- CUDA graphs, as trtexec does: one execution context per captured batch size, each with its input shape set
  once, warmed up and captured at activation (no capture under load); a batch runs in the smallest captured
  size that holds it. A failed capture clears CUDA's last error and leaves that size uncaptured.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from muxdeploy.core.errors import BackendError
from muxdeploy.runtimes.backends.base import Backend, TensorSpec, import_optional
from muxdeploy.runtimes.backends.cuda_buffers import CudaError, CudaLib, DeviceBuffer, PinnedBuffer, Stream, load_cuda
from muxdeploy.runtimes.backends.engine_facts import engine_module, graph_batch_sizes, padded_batch

INSTALL_HINT = (
    "pip install 'muxdeploy[tensorrt]' (tensorrt + cuda-python 12.x); on Jetson use JetPack's TensorRT "
    "(apt install python3-libnvinfer) and pip install 'muxdeploy[jetson]'"
)

_LOGGERS: dict[str, Any] = {}
_LOGGERS_LOCK = threading.Lock()


def shared_logger(trt: Any) -> Any:
    """The process's one ILogger for the TensorRT module `trt`: errors kept per thread, INFO and above captured
    on request (`capture()`), everything printed while `echo` is on in the calling thread."""
    key = getattr(trt, "__name__", "tensorrt")
    with _LOGGERS_LOCK:
        if key not in _LOGGERS:
            _LOGGERS[key] = _make_logger(trt)
        return _LOGGERS[key]


def _make_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    failures = (severity.INTERNAL_ERROR, severity.ERROR)
    quiet = (severity.VERBOSE,)

    class SharedLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._local = threading.local()

        def _state(self) -> Any:
            st = self._local
            if not hasattr(st, "errors"):
                st.errors, st.lines, st.echo = [], None, False
            return st

        @property
        def errors(self) -> list[str]:
            """Errors TensorRT reported to the calling thread since its last `capture()`."""
            return self._state().errors

        def log(self, sev: Any, msg: str) -> None:
            st, text = self._state(), str(msg).strip()
            if sev in failures:
                st.errors.append(text)
            if st.lines is not None and sev not in quiet:
                st.lines.append(text)
            if st.echo:
                print(f"[TensorRT] {text}", flush=True)

        @contextlib.contextmanager
        def capture(self, echo: bool = False) -> Iterator[list[str]]:
            """Clear this thread's errors and collect its INFO+ lines (e.g. the build's layer placement)."""
            st = self._state()
            st.errors, st.lines, st.echo = [], [], echo
            try:
                yield st.lines
            finally:
                st.lines, st.echo = None, False

    return SharedLogger()


def describe_plan(facts: dict[str, Any]) -> str:
    """'TensorRT 10.3.0 on Orin (compute capability 8.7)' from an engine's manifest facts."""
    cc = facts.get("compute_capability")
    cc_text = ".".join(map(str, cc)) if isinstance(cc, (list, tuple)) else cc
    parts = [f"TensorRT {facts.get('tensorrt_version', '?')}"]
    if facts.get("gpu_name") or cc_text:
        parts.append(f"on {facts.get('gpu_name', 'a GPU')} (compute capability {cc_text or '?'})")
    return " ".join(parts)


@dataclass
class IoTensor:
    """One engine I/O tensor: name, input or output, numpy dtype, shape with -1 for the batch axis."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]

    def nbytes(self, batch: int) -> int:
        """Bytes of this tensor at `batch` (the first dynamic axis takes the batch)."""
        dims = [batch if d < 0 else d for d in self.shape]
        return int(np.prod(dims)) * self.dtype.itemsize


def check_bindings(tensors: list[IoTensor], input_spec: TensorSpec, output_spec: TensorSpec) -> str | None:
    """Why an engine with these I/O tensors cannot serve the manifest's input -> output, or None.

    The engine must take exactly the manifest's input and produce its output; further outputs are allowed
    (the backend gives each an address and drops it), further inputs are not (nothing could feed them)."""
    inputs = [t.name for t in tensors if t.is_input]
    outputs = [t.name for t in tensors if not t.is_input]
    if inputs != [input_spec.name] or output_spec.name not in outputs:
        return (
            f"has inputs {inputs} and outputs {outputs}; the manifest expects {input_spec.name!r} -> "
            f"{output_spec.name!r}. Rebuild the engine from this bundle's ONNX"
        )
    for t in tensors:
        if any(d < 0 for d in t.shape[1:]):
            return f"has a dynamic dimension besides the batch in {t.name} {t.shape}; rebuild it from this bundle"
    return None


class SharedEngine:
    """A trt.Runtime and its deserialized engine, shared by every worker in the process (reference-counted)."""

    _registry: ClassVar[dict[tuple[str, str, int, str], SharedEngine]] = {}
    _lock = threading.Lock()

    def __init__(self, trt: Any, path: Path, facts: dict[str, Any], cuda: CudaLib) -> None:
        self.trt, self.path, self.facts, self.users = trt, path, facts, 0
        self.key: tuple[str, str, int, str] = ("", "", 0, "")
        self.logger = shared_logger(trt)
        with self.logger.capture():
            self.runtime = trt.Runtime(self.logger)
            dla_core = facts.get("dla_core")
            if dla_core is not None:
                self.runtime.DLA_core = int(dla_core)
            if facts.get("version_compatible"):
                self.runtime.engine_host_code_allowed = True
            try:
                self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            except Exception as exc:  # some TensorRT versions raise instead of returning None
                self.logger.errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                self.engine = None
            self.errors = list(self.logger.errors)
        if self.engine is None:
            raise BackendError(self._deserialize_error(cuda))

    def _deserialize_error(self, cuda: CudaLib) -> str:
        have = getattr(self.trt, "__version__", "?")
        try:
            gpu_name, cc = cuda.properties()
            here = f"TensorRT {have} on {gpu_name} (compute capability {cc[0]}.{cc[1]})"
        except CudaError:
            here = f"TensorRT {have}"
        why = self.errors[0] if self.errors else "no detail logged"
        return (
            f"{self.path} is not a TensorRT plan this machine can load ({why}); "
            f"it was built with {describe_plan(self.facts)}, this machine has {here}; "
            "rebuild it here with `muxdeploy build-engine`"
        )

    @classmethod
    def acquire(cls, trt: Any, path: Path, facts: dict[str, Any], cuda: CudaLib, device_id: int) -> SharedEngine:
        """The process's engine for this plan and device, deserialized on first use."""
        key = (str(path.resolve()), str(facts.get("sha256", "")), device_id, getattr(trt, "__name__", ""))
        with cls._lock:
            shared = cls._registry.get(key)
            if shared is None:
                shared = cls._registry[key] = SharedEngine(trt, path, facts, cuda)
                shared.key = key
            shared.users += 1
            return shared

    def release(self) -> None:
        """Drop one user; the last one frees the engine, then the runtime."""
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            self._registry.pop(self.key, None)
        self.engine = None
        self.runtime = None

    def io_tensors(self) -> list[IoTensor]:
        """Every I/O tensor of the engine, in engine order."""
        trt, engine = self.trt, self.engine
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append(
                IoTensor(
                    name,
                    engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                    tuple(int(d) for d in engine.get_tensor_shape(name)),
                )
            )
        return out

    def profile(self, input_name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min shape, max shape) of the input in optimization profile 0."""
        lo, _opt, hi = self.engine.get_tensor_profile_shape(input_name, 0)
        return tuple(int(d) for d in lo), tuple(int(d) for d in hi)

    def device_memory_size(self) -> int:
        """Scratch bytes one execution context needs (profile 0)."""
        engine = self.engine
        if hasattr(engine, "get_device_memory_size_for_profile_v2"):
            return int(engine.get_device_memory_size_for_profile_v2(0))
        return int(getattr(engine, "device_memory_size_v2", engine.device_memory_size))


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT plan. Buffers are sized for the max batch once; addresses are set once."""

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
        self.shared: SharedEngine | None = None
        self._contexts: dict[int, Any] = {}  # run batch size -> execution context (input shape set once)
        self._graphs: dict[int, Any] = {}  # run batch size -> instantiated CUDA graph
        self._buffers: list[Any] = []
        self.stream: Stream | None = None
        self.profile_min = 1

    # ---- activate ------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        trt = import_optional(engine_module(self.facts), INSTALL_HINT)
        self.trt = trt
        self.cuda = load_cuda(self.device_id)
        with self.cuda.current():
            try:
                self._activate_on_device(trt)
            except BaseException:
                self._deactivate_impl()  # nothing allocated so far is leaked
                raise

    def _activate_on_device(self, trt: Any) -> None:
        self.shared = SharedEngine.acquire(trt, self.engine_path, self.facts, self.cuda, self.device_id)
        self.logger = self.shared.logger
        tensors = self.shared.io_tensors()
        why = check_bindings(tensors, self.input_spec, self.output_spec)
        if why:
            raise BackendError(f"{self.engine_path} {why}")
        by_name = {t.name: t for t in tensors}
        if by_name[self.input_spec.name].dtype != self.input_spec.dtype:
            got, want = by_name[self.input_spec.name].dtype, self.input_spec.dtype
            raise BackendError(f"{self.engine_path} takes {got}, the manifest says {want}; rebuild it")
        self.out_dtype = by_name[self.output_spec.name].dtype
        lo, hi = self.shared.profile(self.input_spec.name)
        if tuple(hi[1:]) != self.input_spec.shape:
            raise BackendError(
                f"{self.engine_path} was built for input shape {hi}, the manifest says "
                f"[B, {', '.join(map(str, self.input_spec.shape))}]; rebuild the engine from this bundle"
            )
        self.profile_min, profile_max = int(lo[0]), int(hi[0])
        self.max_batch = min(self.max_batch, profile_max)
        alloc_batch = max(self.max_batch, self.profile_min)
        self.stream = Stream(self.cuda)
        self.h_in = self._keep(PinnedBuffer(self.cuda, by_name[self.input_spec.name].nbytes(alloc_batch)))
        self.h_out = self._keep(PinnedBuffer(self.cuda, by_name[self.output_spec.name].nbytes(alloc_batch)))
        self.addresses = {t.name: self._keep(DeviceBuffer(self.cuda, t.nbytes(alloc_batch))) for t in tensors}
        if self.use_graphs and getattr(self.cuda, "supports_graphs", False):
            sizes = graph_batch_sizes(self.profile_min, alloc_batch)
        else:
            sizes = (0,)  # one context whose shape follows the batch
        for size in sizes:
            self._contexts[size] = self._new_context(size)
        if sizes != (0,):
            for size in sizes:
                self._graphs[size] = self._capture(size)

    def _keep(self, buf: Any) -> Any:
        self._buffers.append(buf)
        return buf

    def _new_context(self, batch: int) -> Any:
        """An execution context with every tensor's address set and its own device memory, allocated here
        (user-managed: sized for its one batch when batch > 0, for the profile max otherwise)."""
        trt, engine = self.trt, self.shared.engine
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        with self.logger.capture():
            if strategy is not None:
                context = engine.create_execution_context(strategy.USER_MANAGED)
            else:
                context = engine.create_execution_context_without_device_memory()
            if context is None:
                raise BackendError(
                    f"TensorRT could not create an execution context for {self.engine_path} "
                    f"({self._first_error()}); free GPU memory or use fewer workers"
                )
            for name, buf in self.addresses.items():
                if not context.set_tensor_address(name, buf.ptr):
                    raise BackendError(f"TensorRT refused the buffer address for {name!r}: {self._first_error()}")
            size = self.shared.device_memory_size()
            if batch:
                if not context.set_input_shape(self.input_spec.name, (batch, *self.input_spec.shape)):
                    raise BackendError(f"TensorRT rejected batch size {batch}: {self._first_error()}")
                if hasattr(context, "update_device_memory_size_for_shapes"):
                    size = int(context.update_device_memory_size_for_shapes())
            memory = self._keep(DeviceBuffer(self.cuda, max(size, 1)))
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(memory.ptr, memory.nbytes)
            else:
                context.device_memory = memory.ptr
        return context

    def _first_error(self) -> str:
        errors = self.logger.errors if getattr(self, "logger", None) else []
        return errors[0] if errors else "no detail logged"

    # ---- CUDA graphs ---------------------------------------------------------------------------
    def _capture(self, batch: int) -> Any:
        """Warm up the batch's context, then capture one enqueue into a CUDA graph; None when capture fails."""
        context = self._contexts[batch]
        self._fill_padding(0, batch)
        self.stream.upload(self.addresses_in, self.h_in.view(self.input_spec.dtype, (batch, *self.input_spec.shape)))
        self._enqueue(context, batch, fixed=True)  # flushes deferred shape-dependent work before capture (trtexec)
        self.stream.synchronize()
        try:
            self.cuda.capture_begin(self.stream.raw)
        except CudaError:
            self.cuda.clear_error()
            return None
        with self.logger.capture():
            ok = bool(context.execute_async_v3(self.stream.handle))
        try:
            return self.cuda.capture_end(self.stream.raw, instantiate=ok)
        except CudaError:
            return None  # capture_end cleared CUDA's last error; this size runs without a graph

    @property
    def addresses_in(self) -> DeviceBuffer:
        return self.addresses[self.input_spec.name]

    # ---- infer ---------------------------------------------------------------------------------
    def _fill_padding(self, batch: int, run: int) -> None:
        """Rows batch..run of the pinned input hold copies of row 0 (valid ids; their outputs are dropped)."""
        if run > batch:
            host = self.h_in.view(self.input_spec.dtype, (run, *self.input_spec.shape))
            host[batch:run] = host[0] if batch else 0

    def _enqueue(self, context: Any, batch: int, fixed: bool) -> None:
        """Enqueue one run of `batch` groups; a context that is not `fixed` to a batch gets its shape set first."""
        with self.logger.capture():
            if not fixed and context.get_tensor_shape(self.input_spec.name)[0] != batch:
                if not context.set_input_shape(self.input_spec.name, (batch, *self.input_spec.shape)):
                    raise BackendError(
                        f"TensorRT rejected batch size {batch} (profile {self.profile_min}..{self.max_batch}): "
                        f"{self._first_error()}"
                    )
            if not context.execute_async_v3(self.stream.handle):
                raise BackendError(f"TensorRT execution failed on a batch of {batch}: {self._first_error()}")

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        b = feed.shape[0]
        sizes = tuple(s for s in self._contexts if s)
        run = padded_batch(b, self.profile_min, max(self.max_batch, self.profile_min), sizes)
        with self.cuda.current():
            host_in = self.h_in.view(feed.dtype, (run, *self.input_spec.shape))
            np.copyto(host_in[:b], feed)
            self._fill_padding(b, run)
            host_out = self.h_out.view(self.out_dtype, (run, *self.output_spec.shape))
            self.stream.upload(self.addresses_in, host_in)
            graph = self._graphs.get(run)
            if graph is not None:
                self.cuda.graph_launch(graph, self.stream.raw)
            elif run in self._contexts:
                self._enqueue(self._contexts[run], run, fixed=True)  # its capture failed: run it without a graph
            else:
                self._enqueue(self._contexts[0], run, fixed=False)
            self.stream.download(host_out, self.addresses[self.output_spec.name])
            self.stream.synchronize()
            return host_out[:b].astype(np.float32)

    # ---- deactivate ----------------------------------------------------------------------------
    def _deactivate_impl(self) -> None:
        with self.cuda.current():
            for graph in self._graphs.values():
                if graph is not None:
                    self.cuda.graph_destroy(graph)
            self._graphs.clear()
            self._contexts.clear()  # contexts go before the engine
            for buf in self._buffers:
                buf.free()
            self._buffers.clear()
            if self.stream is not None:
                self.stream.destroy()
                self.stream = None
            if self.shared is not None:
                self.shared.release()
                self.shared = None
