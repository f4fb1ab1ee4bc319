"""`muxdeploy serve` usage errors: one line, exit 2, nothing started."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main


@pytest.mark.skipif(importlib.util.find_spec("starlette") is not None, reason="the [serve] extra is installed")
def test_missing_extra_is_one_line(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(main, ["serve", str(tiny_bundle)])
    assert result.exit_code == 2 and "pip install 'muxdeploy[serve]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_port_and_missing_bundle(tmp_path: Path, tiny_bundle: Path) -> None:
    result = CliRunner().invoke(main, ["serve", str(tiny_bundle), "--port", "70000"])
    assert result.exit_code == 2 and "--port 70000" in result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "nope"), "--port", "8"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1


def test_bad_grpc_port_is_one_line(tiny_bundle: Path) -> None:
    for args in (["--grpc-port", "70000"], ["--port", "8123", "--grpc-port", "8123"]):
        result = CliRunner().invoke(main, ["serve", str(tiny_bundle), *args])
        assert result.exit_code == 2 and "--grpc-port" in result.output and len(result.output.splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("grpc") is None, reason="the [serve] extra is not installed")
def test_grpc_port_in_use_is_one_line(tiny_bundle: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(tiny_bundle), "--port", str(port), "--grpc-port", str(taken)])
    assert result.exit_code == 2 and result.output.startswith("error: cannot listen on")
    assert "choose another --grpc-port" in result.output
