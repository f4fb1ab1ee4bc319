"""`muxdeploy validate`: task accuracy of the deployed bundle vs its PyTorch checkpoint, overall and per slot."""

from __future__ import annotations

import json

import click

from muxdeploy import api
from muxdeploy.commands._options import backend_option, bundle_argument, precision_option


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
@precision_option("Which artifact of the bundle to validate.")
@click.option("--limit", type=int, default=None, help="Use only the first K instances of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
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
    """
    from muxdeploy.evaluation.validation import format_report

    report = api.validate(
        bundle,
        data_path,
        checkpoint=checkpoint,
        backend=backend,
        precision=precision,
        limit=limit,
        progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(format_report(report))
