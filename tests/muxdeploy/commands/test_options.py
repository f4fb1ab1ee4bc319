"""--backend and --precision are one shared option: the same choices (the runtime's lists) on every command."""

from __future__ import annotations

import pytest

from muxdeploy.cli import main
from muxdeploy.core.manifest import PRECISIONS
from muxdeploy.runtimes.backends import BACKENDS, PRECISION_CHOICES


@pytest.mark.parametrize("name", ["run", "bench", "validate"])
def test_backend_and_precision_choices(name: str) -> None:
    params = {p.name: p for p in main.commands[name].params}
    backend, precision = params["backend"], params["precision"]
    assert tuple(backend.type.choices) == BACKENDS
    assert BACKENDS == ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda")
    assert PRECISION_CHOICES == ("auto", *PRECISIONS)
    assert backend.default == "auto" and backend.show_default and precision.show_default
    if name == "validate":  # validate scores every precision unless told one
        assert tuple(precision.type.choices) == ("all", *PRECISION_CHOICES) and precision.default == "all"
    else:
        assert tuple(precision.type.choices) == PRECISION_CHOICES and precision.default == "auto"


def test_export_triton_builds_the_manifest_precisions() -> None:
    params = {p.name: p for p in main.commands["export-triton"].params}
    assert tuple(params["engine_precision"].type.choices) == PRECISIONS
    assert params["tensorrt_module"].default == "tensorrt"
