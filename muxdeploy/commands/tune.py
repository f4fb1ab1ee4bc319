"""`muxdeploy tune`: the fastest (N, precision, backend) of a task's bundles within an accuracy and latency budget."""

from __future__ import annotations

import click

from muxdeploy import api

BACKEND_CHOICES = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")


@click.command("tune")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Labelled JSONL file.")
@click.option(
    "--max-drop",
    type=float,
    default=2.0,
    show_default=True,
    help="Accuracy points allowed below the baseline (the N=1 bundle at FP32, else the best setting).",
)
@click.option("--p99-ms", type=float, default=None, help="p99 latency budget per instance, ms (default: none).")
@click.option(
    "--backend",
    "backends",
    type=click.Choice(BACKEND_CHOICES),
    multiple=True,
    help="Backend to try (repeatable; default: every one this machine runs).",
)
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timing per scenario and setting.")
@click.option(
    "--concurrency", type=int, default=16, show_default=True, help="Producers in the p99 (server) measurement."
)
@click.option("--limit", type=int, default=None, help="Use only the first K instances of --data.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the result here.")
def command(
    bundles: tuple[str, ...],
    data_path: str,
    max_drop: float,
    p99_ms: float | None,
    backends: tuple[str, ...],
    seconds: float,
    concurrency: int,
    limit: int | None,
    json_path: str | None,
) -> None:
    """Measure every N, precision and backend of BUNDLES on this machine; recommend the fastest within budget.

    \b
    Give bundles of one task at several N (each with the precisions built for it). Each setting is scored on
    --data (the deployed side of `muxdeploy validate`, with the group-mate figures) and timed: offline
    instances/s and the p99 latency per instance with --concurrency producers (as `muxdeploy bench`).
    Prints the table and the fastest setting whose accuracy drop against the baseline stays within --max-drop
    points and whose p99 stays within --p99-ms. Exit code 1 when nothing fits, with the closest settings.

    \b
    Example:
      for n in 1 2 5 10; do muxdeploy export ckpt_n$n.pt --n $n -o b$n; \\
        muxdeploy build-engine b$n --int8 --calib-data train.jsonl --backend onnxruntime; done
      muxdeploy tune b1 b2 b5 b10 --data dev.jsonl --max-drop 2 --p99-ms 20 --json tune.json
    """
    from muxdeploy.core.fsutil import write_json_atomic
    from muxdeploy.evaluation.tuning import NoSettingFits, format_table, nothing_fits

    report = api.tune(
        list(bundles),
        data_path,
        max_drop=max_drop,
        p99_ms=p99_ms,
        backends=list(backends) or None,
        seconds=seconds,
        concurrency=concurrency,
        limit=limit,
        progress=True,
        echo=click.echo,
    )
    click.echo("")
    click.echo(format_table(report))
    if json_path:
        write_json_atomic(json_path, report.to_dict())
        click.echo(f"wrote {json_path}")
    if report.recommended is None:
        raise NoSettingFits(nothing_fits(report))
