"""Torch-free runtime for muxdeploy bundles: manifest, packer, backends. Imports only numpy.

from muxdeploy.runtimes import MuxRuntime
"""

from __future__ import annotations

from typing import Any

__all__ = ["MuxRuntime"]


def __getattr__(name: str) -> Any:
    # lazy (PEP 562): importing a submodule such as muxdeploy.runtimes.packing loads nothing else
    if name == "MuxRuntime":
        from muxdeploy.runtimes.runtime import MuxRuntime

        return MuxRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
