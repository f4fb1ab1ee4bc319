"""Atomic writes: the target appears whole or not at all, with the mode a plain open() would give it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from muxdeploy.core.fsutil import atomic_path, write_json_atomic


def test_finished_file_has_the_usual_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_json_atomic(tmp_path / "muxdeploy.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "muxdeploy.json").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "muxdeploy.json").read_text() == '{\n  "a": 1\n}\n'


def test_failed_block_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
