"""`muxdeploy validate`: task accuracy of the deployed bundle vs its PyTorch checkpoint, overall and per slot."""

from __future__ import annotations

import json

import click

from muxdeploy import api
from muxdeploy.commands._options import backend_option, bundle_argument
from muxdeploy.runtimes.backends import PRECISION_CHOICES


@click.command("validate")
@bundle_argument()
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Labelled JSONL file.")
@click.option(
    "--checkpoint",
    type=click.Path(),
    default=None,
    help="PyTorch checkpoint to compare with (default: the manifest's model.source).",
)
@backend_option("Backend of the deployed side (as in `muxdeploy run`).")
@click.option(
    "--precision",
    type=click.Choice(["all", *PRECISION_CHOICES]),
    default="all",
    show_default=True,
    help="Which artifact to validate; all: every precision the backend runs here (the PyTorch side runs once).",
)
@click.option("--limit", type=int, default=None, help="Use only the first K instances of --data.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print JSON instead of the tables: one report object with --precision X, {"reports": [...]} with all.',
)
def command(
    bundle: str,
    data_path: str,
    checkpoint: str | None,
    backend: str,
    precision: str,
    limit: int | None,
    as_json: bool,
) -> None:
    """Score BUNDLE (default ./mux_model) and its PyTorch checkpoint on labelled --data.

    \b
    Data lines:   {"text": "a fine film", "label": "pos"}   or   {"input_ids": [...], "label": 1}
                  {"input_ids": [...], "labels": ["O", "B-person", ...]}   (token tasks; null = not scored)
                  {"tokens": ["Paris", "rocks"], "tags": ["B-geo-loc", "O"]}   (words, bundle tokenizer)
    Prints accuracy (token tasks: token accuracy and entity-span F1 for BIO labels) of the deployed
    runtime and of the PyTorch checkpoint, the drop, how often the two agree, and a per-slot table:
    DataMUX accuracy depends on the slot (position within the group of N). Both sides pack the data
    identically (file order, FIFO), so instance i is in slot i mod N on both.
    Classification also reports the group-mates: accuracy over 5 random re-packings of the data, with
    label-mixed groups, the share of instances whose answer flips between re-packings, and the isolated
    mode's accuracy and instances/s (docs/RUNTIME.md, "Group-mates").

    \b
    Example:
      muxdeploy validate mux_model --data dev.jsonl               # every precision the bundle holds
      muxdeploy validate mux_model --data dev.jsonl --precision int8 --json
    """
    from muxdeploy.evaluation.validation import format_report

    reports = api.validate_all(
        bundle,
        data_path,
        checkpoint=checkpoint,
        backend=backend,
        precisions=None if precision == "all" else [precision],
        limit=limit,
        progress=not as_json,
    )
    if as_json:
        body = reports[0].to_dict() if precision != "all" else {"reports": [r.to_dict() for r in reports]}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo("\n\n".join(format_report(r) for r in reports))
