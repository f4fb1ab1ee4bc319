"""`muxdeploy serve`: an inference server (KServe V2 over HTTP and gRPC, plain JSON) on the streaming runtime."""

from __future__ import annotations

import click

from muxdeploy.commands._options import bundle_argument


@click.command("serve")
@bundle_argument()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port to listen on.")
@click.option(
    "--grpc-port",
    type=int,
    default=None,
    help="Also serve KServe V2 gRPC (tritonclient.grpc) on this port, on the same batcher. Needs the [serve] extra.",
)
@click.option(
    "--name", default="muxdeploy", show_default=True, help="Model name in /v2/models/NAME (as export-triton)."
)
@click.option("--workers", type=int, default=1, show_default=True, help="Engine workers (one backend session each).")
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="auto, tensorrt, onnxruntime, onnxruntime-cpu, onnxruntime-cuda.",
)
@click.option("--precision", default="auto", show_default=True, help="auto, fp32, fp16 or int8.")
@click.option(
    "--max-batch", type=int, default=None, help="Largest batch of N-slot groups per run (default: the bundle's)."
)
@click.option(
    "--max-wait-ms",
    type=float,
    default=2.0,
    show_default=True,
    help="Longest the oldest queued instance waits for a fuller batch.",
)
@click.option(
    "--queue-size", type=int, default=None, help="Queue bound in instances; beyond it requests get 429 at once."
)
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="Larger request bodies get 413.")
@click.option(
    "--drain-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to finish in-flight requests on shutdown.",
)
@click.option("--threads", "intra_op_threads", type=int, default=None, help="onnxruntime threads per worker.")
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def command(
    bundle: str,
    host: str,
    port: int,
    grpc_port: int | None,
    name: str,
    workers: int,
    backend: str,
    precision: str,
    max_batch: int | None,
    max_wait_ms: float,
    queue_size: int | None,
    max_body_bytes: int,
    drain_timeout: float,
    intra_op_threads: int | None,
    log_level: str,
) -> None:
    """Serve BUNDLE (default ./mux_model) over HTTP (and gRPC) until Ctrl-C / SIGTERM, then drain.

    \b
    KServe V2 (tritonclient.http):  GET /v2/health/ready, GET /v2/models/NAME,
      POST /v2/models/NAME/infer with input_ids INT32 [B, T] (or text BYTES [B])
    KServe V2 gRPC with --grpc-port: the same model, batcher and errors (tritonclient.grpc)
    Plain JSON:  POST /v1/predict  {"input_ids": [101, 2023, 102]} | {"text": "..."} | {"instances": [...]}
    Prometheus:  GET /metrics  (Triton's names + muxdeploy_batch_fill_ratio, muxdeploy_padded_slots)
    Instances from all concurrent requests are packed together into N-slot groups.
    \b
      muxdeploy serve mux_model --port 8000 --grpc-port 8001 --workers 2
      curl -s localhost:8000/v1/predict -d '{"text": "a fine film"}'
    """
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.core.extras import require
    from muxdeploy.runtimes.runtime import MuxRuntime

    if not 0 < port < 65536:
        raise UserInputError(f"--port {port} is not a port number (1..65535)")
    if grpc_port is not None and (not 0 < grpc_port < 65536 or grpc_port == port):
        raise UserInputError(f"--grpc-port {grpc_port} is not a port number (1..65535) other than --port")
    if max_body_bytes < 1:
        raise UserInputError(f"--max-body-bytes must be >= 1, got {max_body_bytes}")

    require("muxdeploy serve", "starlette", "uvicorn")
    if grpc_port is not None:
        require("muxdeploy serve --grpc-port", "grpc", "tritonclient.grpc")
    from muxdeploy.serving.http import serve

    _check_port(host, port, "--port")
    if grpc_port is not None:
        _check_port(host, grpc_port, "--grpc-port")
    runtime = MuxRuntime(
        bundle,
        backend=backend,
        precision=precision,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        workers=workers,
        queue_size=queue_size,
        intra_op_threads=intra_op_threads,
    )

    def started(state: object) -> None:
        grpc = f" and grpc://{host}:{grpc_port}" if grpc_port is not None else ""
        click.echo(
            f"serving {bundle} as model {name!r} on http://{host}:{port}{grpc} ({runtime.backend_name}, "
            f"N={runtime.num_instances}, max batch {runtime.max_batch} groups, {workers} worker(s), "
            f"queue {runtime.queue_size} instances)",
        )

    try:
        state = serve(
            runtime,
            host,
            port,
            name,
            max_body_bytes,
            None,
            drain_timeout,
            log_level,
            on_started=started,
            grpc_port=grpc_port,
        )
    finally:
        runtime.close()
    click.echo(f"stopped: {state.accepted} inference requests accepted, {state.answered} answered")


def _check_port(host: str, port: int, flag: str) -> None:
    """Fail in one line when the address cannot be bound (in use, or not an address of this machine)."""
    import socket

    from muxdeploy.core.errors import UserInputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserInputError(f"--host {host}: {reason}; use an address of this machine, e.g. 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another {flag}") from None
