"""core.extras: the one-line error naming the install extra that brings a missing module."""

from __future__ import annotations

import pytest

from muxdeploy.core import extras
from muxdeploy.core.errors import UserInputError


def test_require_names_one_pip_command_for_every_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = {"torch", "onnxruntime", "uvicorn"}
    monkeypatch.setattr(extras, "installed", lambda module: module not in missing)
    extras.require("x", "onnx")  # installed: nothing raised
    with pytest.raises(extras.MissingExtra) as err:
        extras.require("muxdeploy export", "torch", "onnx", "onnxruntime")
    assert str(err.value) == (
        "muxdeploy export needs torch, onnxruntime, not installed here; install the extra: "
        "pip install 'muxdeploy[export,cpu]' (on a CUDA machine [gpu] instead of [cpu])"
    )
    assert isinstance(err.value, UserInputError) and err.value.exit_code == 2
    with pytest.raises(extras.MissingExtra, match=r"needs uvicorn, not installed here; .* 'muxdeploy\[serve\]'$"):
        extras.require("muxdeploy serve", "starlette", "uvicorn")


def test_installed_finds_modules_without_importing_them() -> None:
    assert extras.installed("json") and extras.installed("numpy")
    assert not extras.installed("muxdeploy_no_such_module")
    assert not extras.installed("muxdeploy_no_such_module.sub")  # a missing parent is "not installed", not an error


def test_every_extra_named_exists_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    assert set(extras.EXTRA_OF.values()) <= set(declared)
    for module, extra in extras.EXTRA_OF.items():  # each module's distribution is in its extra
        names = {req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for req in declared[extra]}
        distribution = {"grpc": "grpcio"}.get(module, module.split(".")[0])  # where module and wheel names differ
        assert distribution in names, (module, extra, names)
