"""Options shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from muxdeploy.core.manifest import DEFAULT_BUNDLE


def bundle_argument() -> Any:
    """The optional BUNDLE argument every bundle command takes (default ./mux_model)."""
    return click.argument("bundle", required=False, default=DEFAULT_BUNDLE, type=click.Path(file_okay=False))


def tensorrt_module_option(help: str = "Which TensorRT to build with (TensorRT-RTX for RTX GPUs).") -> Any:
    """--tensorrt-module: the TensorRT an engine is built with (the value is checked where it is used)."""
    return click.option(
        "--tensorrt-module", default="tensorrt", show_default=True, metavar="tensorrt|tensorrt-rtx", help=help
    )
