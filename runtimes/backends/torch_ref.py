"""PyTorch reference backend for tests: runs a torch module on the same packed [B, N, ...] feeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from muxdeploy.runtimes.backends.base import Backend, TensorSpec, import_optional


class TorchBackend(Backend):
    """Wraps an eval-mode torch module `[B, N, ...] -> [B, N, ...]` (CPU). Imports torch only when activated."""

    name = "torch"

    def __init__(self, module: Any, input_spec: TensorSpec, output_spec: TensorSpec, max_batch: int) -> None:
        super().__init__(input_spec, output_spec, max_batch)
        self.module = module
        self._torch: Any = None

    def _activate_impl(self) -> None:
        self._torch = import_optional("torch", "pip install torch")
        self.module.eval()

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(feed))).numpy()

    def _deactivate_impl(self) -> None:
        self._torch = None
