"""muxdeploy: ship DataMUX models as fast N-slot inference on NVIDIA GPUs and Jetson devices.

One import namespace: `muxdeploy.runtimes` (torch-free runtime), `muxdeploy.calibration` (calibration data and
precision), `muxdeploy.exporters` (ONNX, TensorRT, Triton) and the model side (`muxdeploy.models`, ...).
Importing this package imports nothing heavy.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

__version__ = "0.1.0"

# Installed, the folders exporters/, calibration/ and runtimes/ of the source tree live inside this package
# (setuptools package-dir mapping). Run straight from a source checkout (`PYTHONPATH=. python bench/...`, no
# install), this finder maps the same three names onto the sibling folders of the muxdeploy/ imported, ahead of
# any other finder, so a second checkout never mixes its folders with another checkout's editable install.
_MAPPED = ("exporters", "calibration", "runtimes")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


class _SourceTreeFinder:
    """Finds muxdeploy.<name> in the source checkout's top-level folder <name> (for the three mapped names)."""

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        parent, _, child = fullname.rpartition(".")
        if parent != __name__ or child not in _MAPPED:
            return None
        folder = _SOURCE_ROOT / child
        return spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def _in_source_checkout() -> bool:
    return (_SOURCE_ROOT / "pyproject.toml").is_file() and all(
        (_SOURCE_ROOT / name / "__init__.py").is_file() for name in _MAPPED
    )


if _in_source_checkout() and not any(f is _SourceTreeFinder for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceTreeFinder)
