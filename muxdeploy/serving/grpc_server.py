"""The KServe V2 gRPC listener (Triton's `inference.GRPCInferenceService`), beside the HTTP one on the same runtime.

grpcio's asyncio server runs in the HTTP server's event loop; the service definitions are the ones
`tritonclient[grpc]` ships (`tritonclient.grpc.service_pb2[_grpc]`), so tritonclient.grpc (tested) and other
KServe V2 gRPC clients speak to it unchanged. Methods: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics, ModelInfer (the others answer
UNIMPLEMENTED). Requests are decoded into the same V2 tensors as HTTP and answered by `ServerState.infer`;
tensors come in as `raw_input_contents` or typed `contents`, and go out as `raw_output_contents`.
Errors: the HTTP status of `muxdeploy.serving.service.error_for` mapped by `GRPC_CODES`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from muxdeploy import __version__
from muxdeploy.core.errors import QueueFull
from muxdeploy.runtimes.batcher import RuntimeClosed
from muxdeploy.serving.service import ServerState, ServingError, deadline_from, error_for, triton_stats
from muxdeploy.serving.v2 import DTYPES, NAMES, ProtocolError, decode_tensor

log = logging.getLogger("muxdeploy.serve")

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# where a typed (non-raw) input's values live in InferTensorContents
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameters(params: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors by name: from raw_input_contents (one per input) or typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input")
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input {tensor.name!r}: shape {shape} has a negative dimension")
        if raw:
            array = decode_tensor(tensor.name, tensor.datatype, shape, raw[i])
        else:
            field = CONTENTS.get(tensor.datatype)
            if field is None and tensor.datatype not in DTYPES:
                raise ProtocolError(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
            if field is None:
                raise ProtocolError(f"input {tensor.name!r}: {tensor.datatype} data must come as raw_input_contents")
            array = decode_tensor(tensor.name, tensor.datatype, shape, None, list(getattr(tensor.contents, field)))
        if tensor.name in inputs:
            raise ProtocolError(f"input {tensor.name!r} is given twice")
        inputs[tensor.name] = array
    return inputs


def encode_outputs(outputs: dict[str, np.ndarray]) -> tuple[list[pb.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """Output tensor metadata and their raw little-endian bytes (Triton always answers gRPC with raw contents)."""
    specs, blobs = [], []
    for name, array in outputs.items():
        specs.append(
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=NAMES[array.dtype], shape=list(array.shape))
        )
        blobs.append(np.ascontiguousarray(array).tobytes())
    return specs, blobs


class MuxInferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC methods over a `ServerState` (shared with the HTTP listener)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _answer(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run `work`, count the call, and turn a failure into its status code and one-line message."""
        try:
            reply = await work()
        except Exception as exc:
            err = error_for(exc)
            code = GRPC_CODES.get(err.status, grpc.StatusCode.INTERNAL)
            if err.status >= 500 and not isinstance(exc, QueueFull | RuntimeClosed | ServingError):
                log.exception("gRPC %s failed", method)
            self.state.count_grpc(method, code.name)
            await context.abort(code, str(err))
        self.state.count_grpc(method, "OK")
        return reply

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        """Always live while the process answers."""

        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._answer("ServerLive", context, work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Ready unless draining or no engine worker is left."""

        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.state.unready_reason() is None)

        return await self._answer("ServerReady", context, work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """The served model's readiness; NOT_FOUND for another model."""

        async def work() -> pb.ModelReadyResponse:
            self.state.check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.state.unready_reason() is None)

        return await self._answer("ModelReady", context, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        """Name, version and protocol extensions."""

        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="muxdeploy", version=__version__, extensions=["binary_tensor_data"])

        return await self._answer("ServerMetadata", context, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        """The same inputs/outputs as GET /v2/models/NAME."""

        async def work() -> pb.ModelMetadataResponse:
            self.state.check_model(request.name, request.version)
            return json_format.ParseDict(self.state.wire.metadata(), pb.ModelMetadataResponse())

        return await self._answer("ModelMetadata", context, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        """The same Triton-style config as GET /v2/models/NAME/config."""

        async def work() -> pb.ModelConfigResponse:
            self.state.check_model(request.name, request.version)
            return json_format.ParseDict({"config": self.state.wire.config()}, pb.ModelConfigResponse())

        return await self._answer("ModelConfig", context, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        """Triton's statistics extension (all models when no name is given)."""

        async def work() -> pb.ModelStatisticsResponse:
            if request.name:
                self.state.check_model(request.name, request.version)
            stats = triton_stats(self.state.name, self.state.runtime.metrics())
            return json_format.ParseDict({"model_stats": [stats]}, pb.ModelStatisticsResponse())

        return await self._answer("ModelStatistics", context, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """Decode, run through the shared batcher, answer with raw output contents."""

        async def work() -> pb.ModelInferResponse:
            with self.state.inference():
                self.state.check_model(request.model_name, request.model_version)
                inputs = decode_inputs(request)
                deadline = deadline_from(_parameters(request.parameters), context.time_remaining())
                wanted = [o.name for o in request.outputs] or None
                outputs = await self.state.infer(inputs, deadline, wanted)
            specs, blobs = encode_outputs(outputs)
            return pb.ModelInferResponse(
                model_name=self.state.name,
                model_version="1",
                id=request.id,
                outputs=specs,
                raw_output_contents=blobs,
            )

        return await self._answer("ModelInfer", context, work)


async def start_grpc(state: ServerState, host: str, port: int) -> grpc.aio.Server:
    """Start the V2 gRPC server on host:port in the running event loop; messages are capped at --max-body-bytes."""
    limit = state.max_body_bytes
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(MuxInferenceService(state), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServingError(500, f"cannot listen on {address} for gRPC ({exc}); choose another --grpc-port") from None
    if not bound:
        raise ServingError(500, f"cannot listen on {address} for gRPC; choose another --grpc-port")
    await server.start()
    return server
