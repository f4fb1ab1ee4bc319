"""Runtime and server counters as Prometheus text (exposition format 0.0.4), under Triton's metric names."""

from __future__ import annotations

from collections.abc import Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GAUGES = {"nv_inference_pending_request_count", "muxdeploy_batch_fill_ratio", "muxdeploy_http_in_flight"}
HELP = {
    "nv_inference_request_success": "Instances answered successfully",
    "nv_inference_request_failure": "Instances that failed (invalid, deadline, backend error)",
    "nv_inference_count": "Instances inferred (fillers excluded)",
    "nv_inference_exec_count": "Backend executions (batches of N-slot groups)",
    "nv_inference_request_duration_us": "Cumulative time from enqueue to answer, microseconds",
    "nv_inference_queue_duration_us": "Cumulative time instances waited in the queue, microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative packing time, microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative backend time, microseconds",
    "nv_inference_compute_output_duration_us": "Cumulative unpacking time, microseconds",
    "nv_inference_pending_request_count": "Instances queued now",
    "muxdeploy_batch_fill_ratio": "Real instances / slots run (1.0: no filler slots)",
    "muxdeploy_padded_slots": "Slots filled with filler instances",
    "muxdeploy_backend_failures": "Backend runs (batches) that failed; each failed every instance in it",
    "muxdeploy_workers_retired": "Engine workers whose backend failed its probe after a failed batch (no longer used)",
    "muxdeploy_grpc_requests": "gRPC calls by method and status code",
    "muxdeploy_http_requests": "HTTP requests received by route",
    "muxdeploy_http_responses": "HTTP responses sent by status code",
    "muxdeploy_http_in_flight": "Inference HTTP requests being answered now",
}


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


def render(
    model: str, runtime: Mapping[str, float], server: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]]
) -> str:
    """Prometheus text: runtime metrics labelled with the model, then labelled server counters."""
    lines: list[str] = []
    base = {"model": model, "version": "1"}
    for name, value in runtime.items():
        lines.append(f"# HELP {name} {HELP.get(name, name.replace('_', ' '))}")
        lines.append(f"# TYPE {name} {'gauge' if name in GAUGES else 'counter'}")
        lines.append(
            f"{name}{_labels(base)} {float(value):g}" if isinstance(value, float) else f"{name}{_labels(base)} {value}"
        )
    for name, series in server.items():
        lines.append(f"# HELP {name} {HELP.get(name, name.replace('_', ' '))}")
        lines.append(f"# TYPE {name} {'gauge' if name in GAUGES else 'counter'}")
        for labels, value in sorted(series.items()):
            lines.append(f"{name}{_labels(dict(labels))} {value:g}")
    return "\n".join(lines) + "\n"
