"""`muxdeploy export`: checkpoint -> ONNX bundle with a parity-checked manifest."""

from __future__ import annotations

import click

from muxdeploy import api
from muxdeploy.core.manifest import INSTANCES, MANIFEST_NAME


@click.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option(
    "--n",
    "num_instances",
    type=int,
    required=True,
    help="Instances per group; must equal the checkpoint's num_instances.",
)
@click.option(
    "-o", "--out", default="mux_model", show_default=True, type=click.Path(), help="Bundle directory to write."
)
@click.option(
    "--seq-len", type=int, default=None, help="Tokens per instance. Default: the length the model was trained at."
)
@click.option(
    "--max-batch", type=int, default=64, show_default=True, help="Largest batch of N-slot groups the graph accepts."
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18..22).")
@click.option(
    "--task",
    type=click.Choice(["sequence_classification", "token_classification", "retrieval"]),
    default=None,
    help="For reference checkpoint directories: which head to export (default from config.json).",
)
@click.option(
    "--instance-batch",
    is_flag=True,
    help="Also write model.instance_batch.onnx: input_ids [M, L] with M instances (1..max-batch*N); "
    "the graph packs them into N-slot groups itself, so a server's plain batcher can feed it.",
)
def command(
    checkpoint: str,
    num_instances: int,
    out: str,
    seq_len: int | None,
    max_batch: int,
    opset: int,
    task: str | None,
    instance_batch: bool,
) -> None:
    """Export CHECKPOINT (a ckpt.pt or a DataMUX save_pretrained directory) to an ONNX bundle.

    The graph takes input_ids int32 [B, N, L] (B dynamic up to --max-batch) and does all
    multiplexing inside. The ONNX is run on onnxruntime against PyTorch and the max abs
    difference is recorded in the manifest; export fails if it exceeds 1e-4.

    \b
    Example:
      muxdeploy export ckpt.pt --n 10 -o mux_model
    """
    result = api.export(
        checkpoint,
        num_instances,
        out,
        seq_len=seq_len,
        max_batch=max_batch,
        opset=opset,
        task=task,
        instance_batch=instance_batch,
        echo=click.echo,
    )
    click.echo(f"parity vs PyTorch: max abs diff {result.max_abs_diff:.2e} (tolerance 1e-4)")
    click.echo(f"wrote {result.onnx_path}")
    for name in result.manifest.artifacts_where(signature=INSTANCES):
        diff = result.manifest.artifacts[name]["parity"]["max_abs_diff"]
        click.echo(f"wrote {result.bundle / name} (instances [M, L]; vs grouped model: max abs diff {diff:.2e})")
    click.echo(f"wrote {result.bundle / MANIFEST_NAME}")
    if result.manifest.data.get("tokenizer"):
        click.echo(f"wrote {result.bundle / result.manifest.data['tokenizer']}")
