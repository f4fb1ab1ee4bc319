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
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxdeploy import __version__
from muxdeploy.core.errors import BackendError, DeadlineExceeded, MuxError, QueueFull, UserInputError
from muxdeploy.runtimes.batcher import RuntimeClosed
from muxdeploy.runtimes.results import to_jsonable
from muxdeploy.runtimes.runtime import MuxRuntime
from muxdeploy.serving import prometheus
from muxdeploy.serving.model import WireModel
from muxdeploy.serving.v2 import HEADER_LENGTH, ProtocolError, decode_request, encode_response

log = logging.getLogger("muxdeploy.serve")
JSON = "application/json"


class HTTPError(Exception):
    """An error answered with `status` and a JSON body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def json_response(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact)."""
    return Response(json.dumps(doc, separators=(",", ":")), status, headers, media_type=JSON)


def error_for(exc: BaseException) -> HTTPError:
    """The HTTP status for a runtime or protocol exception."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, QueueFull):
        return HTTPError(429, str(exc), {"Retry-After": "1"})
    if isinstance(exc, RuntimeClosed):
        return HTTPError(503, "the server is shutting down; retry on another replica")
    if isinstance(exc, DeadlineExceeded):
        return HTTPError(504, str(exc))
    if isinstance(exc, UserInputError):
        return HTTPError(400, str(exc))
    if isinstance(exc, BackendError | MuxError):
        return HTTPError(500, str(exc))
    return HTTPError(500, f"internal error: {type(exc).__name__}: {exc}")


class ServerState:
    """Shared by the handlers: the runtime, limits, drain flag and HTTP counters."""

    def __init__(self, runtime: MuxRuntime, name: str, max_body_bytes: int, max_request_instances: int) -> None:
        self.runtime = runtime
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.max_request_instances = max_request_instances
        self.wire = WireModel(runtime.manifest, name, runtime.max_batch * runtime.num_instances)
        self.draining = False
        self._lock = threading.Lock()
        self.requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.responses: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.in_flight = 0
        self.accepted = 0  # inference requests whose handler started
        self.answered = 0  # ... and whose response was produced (any status)

    def count(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(("route", route),)] += 1
            self.responses[(("code", str(status)),)] += 1

    def metrics_text(self) -> str:
        with self._lock:
            server = {
                "muxdeploy_http_requests": dict(self.requests),
                "muxdeploy_http_responses": dict(self.responses),
                "muxdeploy_http_in_flight": {(): float(self.in_flight)},
                "muxdeploy_http_inference_accepted": {(): float(self.accepted)},
                "muxdeploy_http_inference_answered": {(): float(self.answered)},
            }
        return prometheus.render(self.name, self.runtime.metrics(), server)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(
                    413, f"request body of {declared} bytes exceeds the limit of {limit} (--max-body-bytes)"
                )
        except ValueError:
            raise HTTPError(400, f"content-length {declared!r} is not an integer") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def run_instances(state: ServerState, instances: list[Any], deadline_s: float | None) -> list[Any]:
    """Submit every instance (never blocking: a full queue answers 429), await all; results or exceptions."""
    if not instances:
        raise HTTPError(400, "the request holds no instances")
    if len(instances) > state.max_request_instances:
        raise HTTPError(
            413,
            f"{len(instances)} instances in one request exceed the limit of {state.max_request_instances}; split it",
        )
    if state.draining:
        raise HTTPError(503, "the server is shutting down; retry on another replica")
    futures: list[Future] = []
    key = object()  # this request's instances may share groups under isolation="request"
    try:
        for inst in instances:
            futures.append(state.runtime.submit(inst, deadline=deadline_s, timeout=0, request_key=key))
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)


def _deadline(params: dict[str, Any]) -> float | None:
    """Triton's `timeout` request parameter (microseconds) as seconds."""
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ProtocolError("parameter 'timeout' must be a positive number of microseconds")
    return float(timeout) / 1e6


def make_app(state: ServerState, on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app over `state` (see the module docstring)."""

    def tracked(route: str, inference: bool = False) -> Callable[[Callable[[Request], Awaitable[Response]]], Any]:
        def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                if inference:
                    with state._lock:
                        state.accepted += 1
                        state.in_flight += 1
                try:
                    response = await handler(request)
                except Exception as exc:
                    err = error_for(exc)
                    if err.status >= 500 and not isinstance(exc, QueueFull | RuntimeClosed | HTTPError):
                        log.exception("request failed")
                    response = json_response(err.status, {"error": str(err)}, err.headers)
                finally:
                    if inference:
                        with state._lock:
                            state.in_flight -= 1
                            state.answered += 1
                state.count(route, response.status_code)
                return response

            return endpoint

        return wrap

    def check_model(request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != state.name:
            raise HTTPError(404, f"unknown model {name!r}; this server serves {state.name!r}")
        if version not in (None, "1"):
            raise HTTPError(404, f"model {name!r} has version '1' only, not {version!r}")

    @tracked("live")
    async def live(request: Request) -> Response:
        return json_response(200, {"live": True})

    @tracked("ready")
    async def ready(request: Request) -> Response:
        if state.draining:
            return json_response(503, {"ready": False, "error": "draining"})
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
        return json_response(503 if state.draining else 200, {"name": state.name, "ready": not state.draining})

    @tracked("model_config")
    async def model_config(request: Request) -> Response:
        check_model(request)
        return json_response(200, state.wire.config())

    @tracked("infer", inference=True)
    async def infer(request: Request) -> Response:
        check_model(request)
        body = await read_body(request, state.max_body_bytes)
        req = decode_request(body, request.headers.get(HEADER_LENGTH))
        instances = state.wire.instances(req.inputs)
        results = await run_instances(state, instances, _deadline(req.parameters))
        for i, res in enumerate(results):
            if isinstance(res, BaseException):
                err = error_for(res)
                prefix = f"row {i}: " if len(results) > 1 else ""
                raise HTTPError(err.status, prefix + str(err), err.headers)
        outputs = state.wire.tensors(results)
        if req.outputs is not None:
            unknown = [o for o in req.outputs if o not in outputs]
            if unknown:
                raise HTTPError(400, f"unknown output {unknown[0]!r}; this model returns {list(outputs)}")
            outputs = {k: outputs[k] for k in req.outputs}
        payload, headers = encode_response(state.name, "1", req.request_id, outputs, req.binary_outputs)
        media = "application/octet-stream" if headers else JSON
        return Response(payload, 200, headers, media_type=media)

    @tracked("predict", inference=True)
    async def predict(request: Request) -> Response:
        body = await read_body(request, state.max_body_bytes)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON ({exc})") from None
        single, instances = _v1_instances(doc)
        deadline = doc.get("timeout_ms") if isinstance(doc, dict) else None
        if deadline is not None and (
            not isinstance(deadline, int | float) or isinstance(deadline, bool) or deadline <= 0
        ):
            raise HTTPError(400, "'timeout_ms' must be a positive number")
        results = await run_instances(state, instances, None if deadline is None else deadline / 1000)
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
            await asyncio.to_thread(on_shutdown)
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


def triton_stats(name: str, m: dict[str, float]) -> dict[str, Any]:
    """Triton's statistics extension entry for one model (perf_analyzer reads it); durations in ns."""

    def stat(count: float, us: float) -> dict[str, int]:
        return {"count": int(count), "ns": int(us * 1000)}

    ok, runs = m["nv_inference_request_success"], m["nv_inference_exec_count"]
    return {
        "name": name,
        "version": "1",
        "last_inference": 0,
        "inference_count": int(m["nv_inference_count"]),
        "execution_count": int(runs),
        "inference_stats": {
            "success": stat(ok, m["nv_inference_request_duration_us"]),
            "fail": stat(m["nv_inference_request_failure"], 0),
            "queue": stat(ok, m["nv_inference_queue_duration_us"]),
            "compute_input": stat(runs, m["nv_inference_compute_input_duration_us"]),
            "compute_infer": stat(runs, m["nv_inference_compute_infer_duration_us"]),
            "compute_output": stat(runs, m["nv_inference_compute_output_duration_us"]),
            "cache_hit": stat(0, 0),
            "cache_miss": stat(0, 0),
        },
        "batch_stats": [],
    }


def _v1_instances(doc: Any) -> tuple[bool, list[Any]]:
    """(single?, instances) from a /v1/predict body."""

    def one(item: Any) -> Any:
        if isinstance(item, dict):
            keys = [k for k in ("input_ids", "text", "pixels") if k in item]
            if len(keys) != 1:
                raise HTTPError(400, "an instance object needs exactly one of 'input_ids', 'text', 'pixels'")
            item = item[keys[0]]
            return np.asarray(item, dtype=np.float32) if keys[0] == "pixels" else item
        return item

    if not isinstance(doc, dict):
        raise HTTPError(
            400, 'body must be a JSON object: {"input_ids": [...]}, {"text": "..."} or {"instances": [...]}'
        )
    if "instances" in doc:
        if not isinstance(doc["instances"], list):
            raise HTTPError(400, "'instances' must be a list")
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
) -> ServerState:
    """Serve until SIGINT/SIGTERM, then drain: stop accepting, answer every accepted request, close the runtime."""
    import uvicorn

    state = ServerState(runtime, name, max_body_bytes, max_request_instances or runtime.queue_size)
    app = make_app(state, on_shutdown=runtime.close)

    class DrainingServer(uvicorn.Server):
        """Marks the app not-ready the moment a shutdown signal arrives (before uvicorn drains)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)
            # a drained shutdown is a normal exit: do not re-raise the signal afterwards (uvicorn >= 0.29 does)
            if isinstance(getattr(self, "_captured_signals", None), list):
                self._captured_signals.clear()

        async def startup(self, sockets: Any = None) -> None:
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
