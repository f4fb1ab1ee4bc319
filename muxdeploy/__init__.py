"""muxdeploy: ship DataMUX models as fast N-slot inference on NVIDIA GPUs and Jetson devices."""

__version__ = "0.1.0"
