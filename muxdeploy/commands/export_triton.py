"""`muxdeploy export-triton`: a bundle -> a Triton model repository."""

from __future__ import annotations

import click

from muxdeploy.commands._options import bundle_argument, tensorrt_module_option
from muxdeploy.core.manifest import PRECISIONS


@click.command("export-triton")
@bundle_argument()
@click.option(
    "-o", "--out", default="triton_repo", show_default=True, type=click.Path(), help="Repository directory to write."
)
@click.option("--name", default="muxdeploy", show_default=True, help="Name clients call (/v2/models/NAME/infer).")
@click.option(
    "--packer",
    type=click.Choice(["none", "python"]),
    default="none",
    show_default=True,
    help="none: the instance-batched model, packed inside the graph. python: a Python-backend packer "
    "(validation, ragged lengths, per-request errors) calling the grouped engine with one BLS request.",
)
@click.option(
    "--engine-backend",
    type=click.Choice(["auto", "onnxruntime", "tensorrt", "python-onnxruntime"]),
    default="auto",
    show_default=True,
    help="The engine step: auto = tensorrt_plan when the bundle has a matching engine, else onnxruntime_onnx. "
    "python-onnxruntime: a Python-backend model running onnxruntime (Triton builds without that backend).",
)
@click.option("--max-queue-delay-us", type=int, default=2000, show_default=True, help="Dynamic batcher wait.")
@click.option(
    "--instances", "count", type=int, default=1, show_default=True, help="Model instances (instance_group count)."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--python-env",
    type=click.Path(file_okay=False),
    default=None,
    help="Environment (venv or unpacked conda-pack) for Python-backend models: Triton's EXECUTION_ENV_PATH.",
)
@click.option(
    "--build-engine",
    "engine_precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="First build the instance-batched TensorRT engine of this precision into BUNDLE (needs TensorRT and, "
    "for fp16/int8, the typed ONNX from `muxdeploy build-engine`), then serve it as tensorrt_plan.",
)
@tensorrt_module_option("With --build-engine: which TensorRT to build with (TensorRT-RTX for RTX GPUs).")
def command(
    bundle: str,
    out: str,
    name: str,
    packer: str,
    engine_backend: str,
    max_queue_delay_us: int,
    count: int,
    force: bool,
    python_env: str | None,
    engine_precision: str | None,
    tensorrt_module: str,
) -> None:
    """Write a Triton model repository for BUNDLE (default ./mux_model).

    \b
    Default: one model taking single instances (input_ids INT32 [L], batched by Triton to [M, L]);
    the graph pads M to groups of N itself, and preferred_batch_size is in multiples of N.
    Clients pad/truncate each instance to L with the pad id. With --packer python, instances may
    have any length 1..L and a bad one fails only its own request.
    \b
    Example:
      muxdeploy export ckpt.pt --n 10 --instance-batch
      muxdeploy export-triton -o triton_repo
      tritonserver --model-repository triton_repo
    """
    from muxdeploy.core.errors import UserInputError
    from muxdeploy.exporters.triton import export_triton

    if engine_precision is not None:
        if packer != "none":
            raise UserInputError(
                "--build-engine builds the instance-batched engine; for --packer python build the grouped engine "
                "with `muxdeploy build-engine` instead"
            )
        from muxdeploy.build import build_instance_engine

        click.echo(f"building the instance-batched {engine_precision} TensorRT engine in {bundle}")
        engine_file, entry = build_instance_engine(bundle, engine_precision, tensorrt_module=tensorrt_module)
        click.echo(f"wrote {bundle}/{engine_file} ({entry.get('plan_bytes', '?')} bytes)")

    repo = export_triton(bundle, out, name, packer, engine_backend, max_queue_delay_us, count, force, python_env)
    for path in repo.files:
        click.echo(f"wrote {path}")
    for model, runtime in repo.models.items():
        click.echo(f"model {model}: {runtime}")
    click.echo(f"serve with: tritonserver --model-repository {repo.root}   (clients call model {repo.public_model!r})")
