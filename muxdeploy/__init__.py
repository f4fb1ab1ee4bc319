"""muxdeploy: ship DataMUX models as fast N-slot inference on NVIDIA GPUs and Jetson devices.

    import muxdeploy
    muxdeploy.export("ckpt.pt", n=10, out="mux_model")
    muxdeploy.build_engine("mux_model", precision="fp16")
    from muxdeploy.runtimes import MuxRuntime

The Python API (`export`, `build_engine`, `validate`, `bench`: muxdeploy.api) is what the CLI calls. One import
namespace: `muxdeploy.core` (errors, files, the bundle manifest), `muxdeploy.runtimes` (torch-free runtime),
`muxdeploy.calibration` (calibration data and precision), `muxdeploy.exporters` (ONNX, TensorRT, Triton) and the
model side (`muxdeploy.models`, ...); docs/ARCHITECTURE.md maps them. Importing this package imports nothing heavy.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["bench", "build_engine", "export", "tune", "validate", "validate_all"]


def __getattr__(name: str) -> Any:
    # lazy (PEP 562): `import muxdeploy` stays light for the torch-free runtime and the Triton packer copy
    if name in __all__:
        from muxdeploy import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
