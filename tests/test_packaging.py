"""pyproject.toml lists every package of the source tree, so an install carries all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if name == "muxdeploy" and parts and parts[0] in ("exporters", "calibration", "runtimes"):
                continue
            found.add(".".join((name, *parts)))
    assert found == set(setuptools["packages"])
