"""DataMUX models in PyTorch.

`MuxConfig` and the variant names import without torch (the CLI builds its option lists from them);
the torch modules load on first use of `DataMuxTransformer` or `build_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from muxdeploy.models.config import MuxConfig

if TYPE_CHECKING:
    from muxdeploy.models.transformer import DataMuxTransformer, build_model

__all__ = ["DataMuxTransformer", "MuxConfig", "build_model"]


def __getattr__(name: str) -> Any:
    """Import the torch-backed names lazily, so `muxdeploy.models.config` stays torch-free."""
    if name in ("DataMuxTransformer", "build_model"):
        from muxdeploy.models import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'muxdeploy.models' has no attribute {name!r}")
