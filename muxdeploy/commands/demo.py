"""`muxdeploy demo`: the shipped models' accuracy against instances/s per N and precision (or, with --train, train
a tiny muxed model from scratch, export it and run it)."""

from __future__ import annotations

import click

from muxdeploy.core.errors import UserInputError


@click.command("demo")
@click.option(
    "--workdir",
    default="muxdeploy-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the bundles (and with --train the checkpoint) are written.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help='Also write the table as {"rows": [...]} here, and beside it a PNG of it when matplotlib is installed.',
)
@click.option("--train", is_flag=True, help="Train a tiny model from scratch instead (about 3 minutes on 2 cores).")
@click.option(
    "--n",
    "num_instances",
    type=click.IntRange(1, 64),
    default=None,
    help="--train: instances multiplexed per network pass [default: 10].",
)
@click.option("--reuse", is_flag=True, help="--train: reuse WORKDIR/ckpt.pt from an earlier run instead of training.")
@click.option(
    "--epochs",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    hidden=True,
    help="Training epochs (default: the tuned recipe).",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, hidden=True, help="Training steps (tests).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    hidden=True,
    help="Use only the first K training sentences (tests).",
)
@click.option("--seed", type=int, default=None, help="--train: training seed [default: 0].")
def command(
    workdir: str,
    json_path: str | None,
    train: bool,
    num_instances: int | None,
    reuse: bool,
    epochs: float | None,
    steps: int | None,
    limit: int | None,
    seed: int | None,
) -> None:
    """Show the DataMUX trade-off on this CPU: accuracy against instances/s at N = 1, 2, 5, 10 (about a minute).

    \b
    For each trained sentiment model shipped with muxdeploy (N = 1, 2, 5, 10): export it to WORKDIR,
    build FP32 and INT8 graphs for onnxruntime, run the 1,057 held-out sentences through the runtime and
    print one table: accuracy, drop and speed-up against N=1, and what group-mates do to the answers
    (accuracy under random and label-mixed packing, flip rate, the isolated mode's accuracy and speed).
    The accuracies are `muxdeploy validate`'s on the same bundles.

    \b
    Examples:
      muxdeploy demo
      muxdeploy demo --json demo.json          # + demo.png with matplotlib
      muxdeploy demo --train --n 2             # train from scratch instead (about 3 minutes)
    """
    from muxdeploy.core.extras import require

    require("muxdeploy demo", "torch", "onnx", "onnxscript", "onnxruntime")
    if train:
        _train_demo(workdir, num_instances or 10, epochs, steps, limit, reuse, seed or 0, json_path)
        return
    train_flags = {"--n": num_instances, "--reuse": reuse, "--epochs": epochs, "--steps": steps, "--limit": limit}
    given = [flag for flag, value in {**train_flags, "--seed": seed}.items() if value not in (None, False)]
    if given:
        raise UserInputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to `muxdeploy demo --train`")
    from muxdeploy.demo_shipped import run_shipped_demo, write_plot

    report = run_shipped_demo(workdir, echo=click.echo)
    click.echo("")
    click.echo(report.table())
    s = report.stage_seconds
    click.echo(
        f"took {report.seconds:.0f} s (export {s['export']:.0f} s, build {s['build']:.0f} s, "
        f"validate {s['validate']:.0f} s, timing {s['timing']:.0f} s); bundles in {workdir}/"
    )
    if json_path:
        _write_json(json_path, report.to_dict())
        png = json_path.removesuffix(".json") + ".png"
        if write_plot(report, png):
            click.echo(f"wrote {png}")
        else:
            click.echo("no PNG: matplotlib is not installed (pip install 'muxdeploy[plot]')")
    click.echo(
        f"same numbers: muxdeploy validate {workdir}/sentiment-n10 --data {report.dev_data} --backend onnxruntime-cpu"
    )


def _write_json(path: str, body: dict) -> None:
    from muxdeploy.core.fsutil import write_json_atomic

    write_json_atomic(path, body)
    click.echo(f"wrote {path}")


def _train_demo(
    workdir: str,
    num_instances: int,
    epochs: float | None,
    steps: int | None,
    limit: int | None,
    reuse: bool,
    seed: int,
    json_path: str | None,
) -> None:
    """The train-from-scratch demo (`muxdeploy.demo.run_demo`)."""
    from muxdeploy.demo import run_demo

    report = run_demo(
        workdir, num_instances, epochs=epochs, steps=steps, limit=limit, reuse=reuse, seed=seed, echo=click.echo
    )
    click.echo("")
    click.echo(report.table())
    if report.num_instances > 2 and report.torch_accuracy - report.majority_accuracy < 0.15:
        click.echo(
            f"  note: at N={report.num_instances} one 64-wide vector per token carries "
            f"{report.num_instances} sentences; a tiny model trained for minutes on a CPU learns little of that "
            "(the paper fine-tunes BERT-base after a retrieval warm-up). `muxdeploy demo` (no --train) shows "
            "models trained longer on a GPU."
        )
    click.echo("")
    for name, path in report.paths.items():
        click.echo(f"wrote {name}: {path}")
    if json_path:
        row = {
            "n": report.num_instances,
            "precision": "fp32",
            "accuracy": report.onnx_accuracy,
            "instances_per_s": report.onnx_instances_per_s,
        }
        _write_json(json_path, {"rows": [row], "trained_seconds": report.train_seconds})
    click.echo(f"next: muxdeploy inspect {report.paths['bundle']}")
