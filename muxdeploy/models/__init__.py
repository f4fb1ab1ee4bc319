"""DataMUX models in PyTorch."""

from muxdeploy.models.config import MuxConfig
from muxdeploy.models.transformer import DataMuxTransformer, build_model

__all__ = ["DataMuxTransformer", "MuxConfig", "build_model"]
