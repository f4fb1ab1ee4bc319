"""Fixtures for runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A writable copy of tiny_bundle."""
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out
