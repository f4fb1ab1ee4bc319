"""`muxdeploy bench`: instances/s and latency percentiles through the runtime; `--sweep-n` for speed-up vs N."""

from __future__ import annotations

import json

import click

from muxdeploy import api
from muxdeploy.commands._options import backend_option, bundle_argument, precision_option


def _parse_ns(text: str | None) -> list[int] | None:
    from muxdeploy.core.errors import UserInputError

    if text is None:
        return None
    try:
        ns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--sweep-n takes comma-separated integers like 1,2,5,10, got {text!r}") from None
    if not ns or any(n < 1 for n in ns):
        raise UserInputError(f"--sweep-n needs positive integers like 1,2,5,10, got {text!r}")
    return ns


@click.command("bench")
@bundle_argument()
@backend_option("Backend to measure (as in `muxdeploy run`).")
@precision_option("Which artifact to measure.")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Measurement time per scenario (per N).")
@click.option(
    "--scenario",
    type=click.Choice(["offline", "server", "both"]),
    default="both",
    show_default=True,
    help="offline: predict() on big sets; server: concurrent submit() producers.",
)
@click.option(
    "--concurrency", type=int, default=64, show_default=True, help="Server scenario: producers, one request each."
)
@click.option(
    "--instances-per-step",
    type=int,
    default=None,
    help="Offline scenario: instances per predict() (default: one full batch, max_batch x N).",
)
@click.option("--max-wait-ms", type=float, default=2.0, show_default=True, help="Server: the batcher's max wait.")
@click.option("--workers", type=int, default=1, show_default=True, help="Server: engine workers.")
@click.option("--sweep-n", default=None, help="Export the --preset at each N (e.g. 1,2,5,10,20,40) and compare.")
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small", "base"]),
    default="tiny",
    show_default=True,
    help="--sweep-n: model size (random weights).",
)
@click.option("--seq-len", type=int, default=64, show_default=True, help="--sweep-n: tokens per instance.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="--sweep-n: draw the table into a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def command(
    bundle: str,
    backend: str,
    precision: str,
    seconds: float,
    scenario: str,
    concurrency: int,
    instances_per_step: int | None,
    max_wait_ms: float,
    workers: int,
    sweep_n: str | None,
    preset: str,
    seq_len: int,
    plot: str | None,
    as_json: bool,
) -> None:
    """Measure BUNDLE (default ./mux_model) through the runtime, as perf_analyzer and MLPerf do.

    \b
    offline  predict() on --instances-per-step instances per call, back to back:
             throughput and per-call latency.
    server   --concurrency producers, each with one instance in flight (submit, wait, repeat):
             throughput and per-instance latency p50/p90/p99 (includes the batcher's wait).
    --sweep-n 1,2,5,10 exports the --preset architecture (random weights) at each N and measures it
    offline at the same instances per step (default 640); N=1 is the unmultiplexed baseline. The
    speed-up table says what multiplexing buys on this machine; --plot out.png draws it (matplotlib).
    Instances are random token ids of lengths L/2..L (speed does not depend on their values).

    \b
    Examples:
      muxdeploy bench mux_model --precision int8 --seconds 5
      muxdeploy bench --sweep-n 1,2,5,10 --preset tiny --plot speedup.png
    """
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.core.extras import require
    from muxdeploy.evaluation import benchmark

    benchmark.check_options(seconds, concurrency, instances_per_step, scenario)
    ns = _parse_ns(sweep_n)
    if plot and ns is None:
        raise UserInputError("--plot draws the --sweep-n table; add --sweep-n 1,2,5,10")
    if ns is not None:
        require("muxdeploy bench --sweep-n", "torch", "onnx", "onnxscript", "onnxruntime")  # it exports each N
        k = 640 if instances_per_step is None else instances_per_step
        if plot:
            benchmark.require_matplotlib(plot)  # fail before the exports, not after

        def show(row: dict) -> None:
            if not as_json:
                click.echo(f"N={row['n']}: {row['instances_per_s']:,.0f} instances/s ({row['backend']})", err=True)

        rows = benchmark.sweep_n(ns, preset, seq_len, k, seconds, backend, precision, progress=not as_json, on_row=show)
        title = f"{preset} preset, L={seq_len}, {k} instances/step, {rows[0]['backend'].split(' (')[0]}"
        written = benchmark.plot_sweep(rows, plot, title) if plot else None
        if as_json:
            click.echo(json.dumps({"sweep": rows, "preset": preset, "seq_len": seq_len, "plot": plot}, indent=2))
        else:
            click.echo(f"N sweep: {title}")
            click.echo(benchmark.format_sweep(rows))
        if written:
            click.echo(f"wrote {written}", err=as_json)
        return

    report = api.bench(
        bundle,
        backend=backend,
        precision=precision,
        seconds=seconds,
        scenario=scenario,
        concurrency=concurrency,
        instances_per_step=instances_per_step,
        max_wait_ms=max_wait_ms,
        workers=workers,
        progress=not as_json,
        echo=None if as_json else click.echo,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
