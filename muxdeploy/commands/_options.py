"""Options shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from muxdeploy.core.manifest import DEFAULT_BUNDLE
from muxdeploy.runtimes.backends import BACKENDS, PRECISION_CHOICES


def bundle_argument() -> Any:
    """The optional BUNDLE argument every bundle command takes (default ./mux_model)."""
    return click.argument("bundle", required=False, default=DEFAULT_BUNDLE, type=click.Path(file_okay=False))


def backend_option(help: str) -> Any:
    """--backend: which runtime backend runs the bundle (choices: the runtime's BACKENDS, default auto)."""
    return click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True, help=help)


def precision_option(help: str) -> Any:
    """--precision: which artifact of the bundle to run (choices: auto and the manifest's PRECISIONS)."""
    return click.option(
        "--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True, help=help
    )


def tensorrt_module_option(help: str = "Which TensorRT to build with (TensorRT-RTX for RTX GPUs).") -> Any:
    """--tensorrt-module: the TensorRT an engine is built with (the value is checked where it is used)."""
    return click.option(
        "--tensorrt-module", default="tensorrt", show_default=True, metavar="tensorrt|tensorrt-rtx", help=help
    )
