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
