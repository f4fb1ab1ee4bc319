"""The one small interface every inference backend implements (Polygraphy's runner lifecycle).

`activate()` loads the model (session, engine, buffers), `infer(feed)` runs one batch of N-slot
groups, `deactivate()` frees everything; a backend is also a context manager. Subclasses fill in
`_activate_impl` / `_infer_impl` / `_deactivate_impl`; the base checks the feed (rank, shape after
the batch axis, dtype, batch size) once for all of them, so no backend repeats it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from muxdeploy.core.errors import BackendError, MuxError


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and per-batch shape (everything after B) of a model input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> TensorSpec:
        """Build from a manifest `inputs`/`outputs` entry ({"name", "dtype", "shape": ["B", N, ...]})."""
        return cls(str(entry["name"]), np.dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"][1:]))


class MissingDependency(MuxError):
    """A backend's library is not installed; the message says what to install."""

    exit_code = 2


def import_optional(module: str, install_hint: str) -> ModuleType:
    """Import `module` or raise MissingDependency with a one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} is not installed ({exc}); install it with: {install_hint}") from None


class Backend:
    """Runs [B, N, ...] feeds through one model artifact. One instance = one context/stream/session.

    Not thread-safe: give each worker thread its own instance (one context, stream and set of buffers each).
    """

    name = "backend"

    def __init__(self, input_spec: TensorSpec, output_spec: TensorSpec, max_batch: int) -> None:
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.max_batch = int(max_batch)
        self.is_active = False

    # ---- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> Backend:
        """Load the model and allocate what inference needs. Idempotent."""
        if not self.is_active:
            self._activate_impl()
            self.is_active = True
        return self

    def infer(self, feed: np.ndarray) -> np.ndarray:
        """Run one batch: `feed` [B, *input shape] of the input dtype -> outputs [B, *output shape]."""
        if not self.is_active:
            raise BackendError(f"{self.name} backend is not active; call activate() or use it as a context manager")
        self.check_feed(feed)
        out = self._infer_impl(feed)
        expected = (feed.shape[0], *self.output_spec.shape)
        if out.shape != expected:
            raise BackendError(f"{self.name} backend returned shape {out.shape}, the manifest promises {expected}")
        return out

    def deactivate(self) -> None:
        """Free the session/engine/buffers. Idempotent."""
        if self.is_active:
            self.is_active = False
            self._deactivate_impl()

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # ---- checks --------------------------------------------------------------------------------
    def check_feed(self, feed: np.ndarray) -> None:
        """Raise BackendError unless `feed` has the input's dtype, per-batch shape and a batch size in range."""
        spec = self.input_spec
        if not isinstance(feed, np.ndarray):
            raise BackendError(f"{self.name} backend takes a numpy array, got {type(feed).__name__}")
        if feed.dtype != spec.dtype:
            raise BackendError(f"input {spec.name!r} must be {spec.dtype}, got {feed.dtype}")
        if feed.ndim != len(spec.shape) + 1 or feed.shape[1:] != spec.shape:
            want = ", ".join(map(str, spec.shape))
            raise BackendError(f"input {spec.name!r} must have shape [B, {want}], got {list(feed.shape)}")
        if not 1 <= feed.shape[0] <= self.max_batch:
            raise BackendError(f"batch of {feed.shape[0]} groups is outside 1..{self.max_batch} for {spec.name!r}")

    # ---- for subclasses ------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _deactivate_impl(self) -> None:
        raise NotImplementedError
