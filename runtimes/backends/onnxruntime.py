"""onnxruntime backend: CPU, or CUDA (device-resident I/O and CUDA graphs, `ort_cuda.CudaIO`) with onnxruntime-gpu.

API used (checked against onnxruntime 1.32 here): `SessionOptions.intra_op_num_threads`,
`SessionOptions.inter_op_num_threads`, `SessionOptions.log_severity_level`,
`SessionOptions.graph_optimization_level` (`GraphOptimizationLevel.ORT_*`),
`get_available_providers()`, `InferenceSession(path, opts, providers=...)`, `get_providers()`,
CUDA provider options `device_id` and `enable_cuda_graph` (the I/O binding calls are listed in `ort_cuda`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import BackendError, UserInputError
from muxdeploy.runtimes.backends.base import Backend, TensorSpec, import_optional
from muxdeploy.runtimes.backends.ort_cuda import CudaIO

INSTALL_HINT = "pip install 'muxdeploy[cpu]' (onnxruntime) or 'muxdeploy[gpu]' (onnxruntime-gpu, CUDA)"
# The manifest's `session_graph_optimization_level` for an artifact (an ORT-optimized FP16 graph needs
# "extended": at "all", onnxruntime 1.32's CPU session crashes on it) -> onnxruntime's enum member.
GRAPH_OPTIMIZATION = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line install hint."""
    return import_optional("onnxruntime", INSTALL_HINT)


def cuda_available() -> bool:
    """True when the installed onnxruntime offers the CUDA execution provider."""
    try:
        return CUDA in import_onnxruntime().get_available_providers()
    except Exception:  # a missing or broken onnxruntime means no CUDA here
        return False


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for `device` ("auto", "cuda", "cpu").

    auto: CUDA (then CPU as fallback for unsupported nodes) when offered, else CPU. The TensorRT
    execution provider is never picked: engines are built and run by the tensorrt backend.
    """
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise UserInputError(f"onnxruntime has no CUDA provider here (has {', '.join(available)}); {INSTALL_HINT}")
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise UserInputError(f"unknown onnxruntime device {device!r}; use auto, cuda or cpu")


def check_graph_optimization(level: str) -> None:
    """Raise UserInputError unless `level` names an onnxruntime graph optimization level (a GRAPH_OPTIMIZATION key)."""
    if level not in GRAPH_OPTIMIZATION:
        raise UserInputError(
            f"unknown onnxruntime graph optimization level {level!r}; use one of {', '.join(GRAPH_OPTIMIZATION)}"
        )


def make_session(
    path: str | Path,
    device: str = "cpu",
    intra_op_threads: int | None = None,
    graph_optimization: str = "all",
    device_id: int = 0,
    provider_options: dict[str, Any] | None = None,
) -> Any:
    """An onnxruntime InferenceSession over one ONNX file, with quiet logs: the one place muxdeploy makes one.

    `device`: "cpu", "cuda" or "auto" (see `choose_providers`); `intra_op_threads` caps intra-op threads (and
    runs one inter-op thread); `graph_optimization` is a GRAPH_OPTIMIZATION key; `provider_options` go to the
    CUDA provider beside `device_id`. A file onnxruntime cannot load raises a one-line BackendError.
    """
    check_graph_optimization(graph_optimization)
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = 1
    providers = choose_providers(device, ort.get_available_providers())
    cuda_options = {"device_id": device_id, **(provider_options or {})}
    provider_args: list[Any] = [(CUDA, cuda_options) if p == CUDA else p for p in providers]
    try:
        return ort.InferenceSession(str(path), opts, providers=provider_args)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"onnxruntime cannot load {path}: {first}; re-export the bundle") from None


class OnnxRuntimeBackend(Backend):
    """One InferenceSession over one ONNX file. On CUDA, inputs and outputs go through an I/O binding."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        input_spec: TensorSpec,
        output_spec: TensorSpec,
        max_batch: int,
        device: str = "auto",
        intra_op_threads: int | None = None,
        device_id: int = 0,
        graph_optimization: str = "all",
        cuda_graphs: bool = True,
        provider_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(input_spec, output_spec, max_batch)
        check_graph_optimization(graph_optimization)
        self.graph_optimization = graph_optimization
        self.model_path = Path(model_path)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.device_id = device_id
        self.cuda_graphs = cuda_graphs
        self.provider_options = dict(provider_options or {})
        self.session: Any = None
        self.providers: list[str] = []
        self.cuda_graph_error: str | None = None  # why CUDA graphs were turned off, when they were
        self._io: CudaIO | None = None

    def _activate_impl(self) -> None:
        self._open(graphs=self.cuda_graphs and self.device != "cpu")

    def _open(self, graphs: bool) -> None:
        """Create the session (and, on CUDA, its device buffers); `graphs` asks for CUDA graphs."""
        options = {**self.provider_options, **({"enable_cuda_graph": "1"} if graphs else {})}
        self.session = make_session(
            self.model_path, self.device, self.intra_op_threads, self.graph_optimization, self.device_id, options
        )
        self.providers = list(self.session.get_providers())
        # onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing: bind only when CUDA is live.
        on_cuda = CUDA in self.providers
        if self.device == "cuda" and not on_cuda:
            raise BackendError(
                f"onnxruntime could not start its CUDA provider (runs on {self.providers}); check CUDA/cuDNN"
            )
        names = [i.name for i in self.session.get_inputs()]
        if self.input_spec.name not in names:
            raise BackendError(
                f"{self.model_path} has inputs {names}, the manifest says {self.input_spec.name!r}; re-export"
            )
        self._io = None
        if on_cuda:
            self._io = CudaIO(
                import_onnxruntime(),
                self.session,
                self.input_spec.name,
                self.input_spec.shape,
                self.input_spec.dtype,
                self.output_spec.name,
                self.output_spec.shape,
                self.max_batch,
                self.device_id,
                graphs,
            )

    @property
    def uses_cuda_graphs(self) -> bool:
        """True while inference replays CUDA graphs (one per batch bucket)."""
        return self._io is not None and self._io.graphs

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        if self._io is None:
            return self.session.run([self.output_spec.name], {self.input_spec.name: feed})[0]
        try:
            return self._io.run(feed)
        except Exception as exc:
            if not self._io.graphs:
                raise
            # a graph onnxruntime cannot capture (e.g. a node it placed on the CPU): run this session without graphs
            self.cuda_graph_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._open(graphs=False)
            return self._io.run(feed)

    def _deactivate_impl(self) -> None:
        self._io = None
        self.session = None
