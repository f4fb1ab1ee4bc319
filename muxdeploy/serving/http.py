"""The HTTP edge server: KServe V2 (what tritonclient and perf_analyzer speak) + plain JSON, on MuxRuntime.submit.

Starlette (ASGI) on uvicorn, one process. Each request's instances go to `MuxRuntime.submit`, whose
dynamic batcher packs instances from all concurrent requests into N-slot groups; the handler awaits
their futures. Errors are JSON `{"error": "..."}`: 400 malformed request or invalid instance,
404 unknown route or model, 405 wrong method, 413 body too large, 429 queue full (at once, never
blocking the event loop), 503 draining or closed, 504 deadline passed, 500 backend failure.

Routes:
  GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}, /v2/models/{name}/ready,
       /v2/models/{name}/config, /v2/models/{name}/stats (Triton's statistics extension), /metrics
  POST /v2/models/{name}/infer     (JSON, or JSON + binary tensors: Inference-Header-Content-Length)
  POST /v1/predict                  {"input_ids": [...]} | {"text": "..."} | {"instances": [...]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxdeploy import __version__
from muxdeploy.core.errors import QueueFull, UserInputError
from muxdeploy.runtimes.batcher import RuntimeClosed
from muxdeploy.runtimes.results import to_jsonable
from muxdeploy.runtimes.runtime import MuxRuntime
from muxdeploy.serving import prometheus
from muxdeploy.serving.service import ServerState, ServingError, deadline_from, error_for, triton_stats
from muxdeploy.serving.v2 import HEADER_LENGTH, decode_request, encode_response

log = logging.getLogger("muxdeploy.serve")
JSON = "application/json"


def json_response(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact)."""
    return Response(json.dumps(doc, separators=(",", ":")), status, headers, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ServingError(
                    413, f"request body of {declared} bytes exceeds the limit of {limit} (--max-body-bytes)"
                )
        except ValueError:
            raise ServingError(400, f"content-length {declared!r} is not an integer") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(state: ServerState, on_shutdown: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """The ASGI app over `state` (see the module docstring); `on_shutdown` runs after the HTTP listener drained."""

    def tracked(route: str, inference: bool = False) -> Callable[[Callable[[Request], Awaitable[Response]]], Any]:
        def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                with state.inference() if inference else contextlib.nullcontext():
                    try:
                        response = await handler(request)
                    except Exception as exc:
                        err = error_for(exc)
                        if err.status >= 500 and not isinstance(exc, QueueFull | RuntimeClosed | ServingError):
                            log.exception("request failed")
                        response = json_response(err.status, {"error": str(err)}, err.headers)
                state.count(route, response.status_code)
                return response

            return endpoint

        return wrap

    def check_model(request: Request) -> None:
        state.check_model(request.path_params["name"], request.path_params.get("version"))

    @tracked("live")
    async def live(request: Request) -> Response:
        return json_response(200, {"live": True})

    @tracked("ready")
    async def ready(request: Request) -> Response:
        reason = state.unready_reason()
        if reason is not None:
            return json_response(503, {"ready": False, "error": reason})
        return json_response(200, {"ready": True})

    @tracked("server_metadata")
    async def server_metadata(request: Request) -> Response:
        return json_response(200, {"name": "muxdeploy", "version": __version__, "extensions": ["binary_tensor_data"]})

    @tracked("model_metadata")
    async def model_metadata(request: Request) -> Response:
        check_model(request)
        return json_response(200, state.wire.metadata())

    @tracked("model_ready")
    async def model_ready(request: Request) -> Response:
        check_model(request)
        ok = state.unready_reason() is None
        return json_response(200 if ok else 503, {"name": state.name, "ready": ok})

    @tracked("model_config")
    async def model_config(request: Request) -> Response:
        check_model(request)
        return json_response(200, state.wire.config())

    @tracked("infer", inference=True)
    async def infer(request: Request) -> Response:
        check_model(request)
        body = await read_body(request, state.max_body_bytes)
        req = decode_request(body, request.headers.get(HEADER_LENGTH))
        outputs = await state.infer(req.inputs, deadline_from(req.parameters), req.outputs)
        payload, headers = encode_response(state.name, "1", req.request_id, outputs, req.binary_outputs)
        media = "application/octet-stream" if headers else JSON
        return Response(payload, 200, headers, media_type=media)

    @tracked("predict", inference=True)
    async def predict(request: Request) -> Response:
        body = await read_body(request, state.max_body_bytes)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServingError(400, f"request body is not valid JSON ({exc})") from None
        single, instances = _v1_instances(doc)
        deadline = doc.get("timeout_ms") if isinstance(doc, dict) else None
        if deadline is not None and (
            not isinstance(deadline, int | float) or isinstance(deadline, bool) or deadline <= 0
        ):
            raise ServingError(400, "'timeout_ms' must be a positive number")
        results = await state.run_instances(instances, None if deadline is None else deadline / 1000)
        if single:
            if isinstance(results[0], BaseException):
                raise results[0]
            return json_response(200, {"output": to_jsonable(results[0])})
        fatal = [r for r in results if isinstance(r, BaseException) and not isinstance(r, UserInputError)]
        if fatal:
            raise fatal[0]
        return json_response(200, {"outputs": [to_jsonable(r) for r in results]})

    @tracked("metrics")
    async def metrics(request: Request) -> Response:
        return Response(state.metrics_text(), 200, media_type=prometheus.CONTENT_TYPE)

    @tracked("model_stats")
    async def model_stats(request: Request) -> Response:
        if "name" in request.path_params:
            check_model(request)
        return json_response(200, {"model_stats": [triton_stats(state.name, state.runtime.metrics())]})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        response = json_response(status, {"error": message.get(status, str(getattr(exc, "detail", exc)))})
        state.count("unknown" if status == 404 else "other", status)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.draining = True
        if on_shutdown is not None:
            await on_shutdown()
        log.warning("drained: %d inference requests accepted, %d answered", state.accepted, state.answered)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/config", model_config, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v2/models/stats", model_stats, methods=["GET"]),
        Route("/v2/models/{name}/stats", model_stats, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/stats", model_stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.mux = state
    return app


def _v1_instances(doc: Any) -> tuple[bool, list[Any]]:
    """(single?, instances) from a /v1/predict body."""

    def one(item: Any) -> Any:
        if isinstance(item, dict):
            keys = [k for k in ("input_ids", "text", "pixels") if k in item]
            if len(keys) != 1:
                raise ServingError(400, "an instance object needs exactly one of 'input_ids', 'text', 'pixels'")
            item = item[keys[0]]
            return np.asarray(item, dtype=np.float32) if keys[0] == "pixels" else item
        return item

    if not isinstance(doc, dict):
        raise ServingError(
            400, 'body must be a JSON object: {"input_ids": [...]}, {"text": "..."} or {"instances": [...]}'
        )
    if "instances" in doc:
        if not isinstance(doc["instances"], list):
            raise ServingError(400, "'instances' must be a list")
        return False, [one(x) for x in doc["instances"]]
    return True, [one(doc)]


def serve(
    runtime: MuxRuntime,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "muxdeploy",
    max_body_bytes: int = 1 << 20,
    max_request_instances: int | None = None,
    drain_timeout: float = 30.0,
    log_level: str = "warning",
    on_started: Callable[[ServerState], None] | None = None,
    grpc_port: int | None = None,
) -> ServerState:
    """Serve HTTP (and gRPC on `grpc_port`) until SIGINT/SIGTERM, then drain.

    Draining: both listeners answer inference with 503 / UNAVAILABLE and readiness turns false at once; the
    HTTP listener closes and finishes its requests, then the gRPC server stops and finishes its calls
    (`drain_timeout` each), then the runtime drains its queue and closes.
    """
    import uvicorn

    state = ServerState(runtime, name, max_body_bytes, max_request_instances or runtime.queue_size)
    listeners: list[Any] = []  # the gRPC server, once started

    async def shutdown() -> None:
        for listener in listeners:
            await listener.stop(drain_timeout)
        await asyncio.to_thread(runtime.close)

    app = make_app(state, on_shutdown=shutdown)

    class DrainingServer(uvicorn.Server):
        """Marks the app not-ready the moment a shutdown signal arrives (before uvicorn drains)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)
            # a drained shutdown is a normal exit: do not re-raise the signal afterwards (uvicorn >= 0.29 does)
            if isinstance(getattr(self, "_captured_signals", None), list):
                self._captured_signals.clear()

        async def startup(self, sockets: Any = None) -> None:
            if grpc_port is not None:
                from muxdeploy.serving.grpc_server import start_grpc

                listeners.append(await start_grpc(state, host, grpc_port))
            await super().startup(sockets)
            if on_started is not None and not self.should_exit:
                on_started(state)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=drain_timeout,
        lifespan="on",
        backlog=2048,
    )
    DrainingServer(config).run()
    return state
