"""Runtime test helpers (import as `runtime_helpers`): an echo backend whose answer identifies each instance."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends.base import Backend, TensorSpec


class EchoBackend(Backend):
    """Classification-shaped output [B, N, 3] = (sum of ids, first id, non-pad count) per slot.

    Independent of group-mates, so a test can tell which instance an answer belongs to under any
    grouping. `gate` (an Event) blocks each batch until set; `fail_when` makes a batch raise.
    """

    name = "echo"
    batches: list[int]

    def __init__(
        self,
        manifest: Manifest,
        gate: threading.Event | None = None,
        fail_when: Callable[[np.ndarray], bool] | None = None,
    ) -> None:
        inp = TensorSpec.from_manifest(manifest.data["inputs"][0])
        out = TensorSpec(manifest.output_name, np.dtype("float32"), (manifest.num_instances, 3))
        super().__init__(inp, out, manifest.max_batch)
        self.gate = gate
        self.fail_when = fail_when
        self.batches = []
        self.started = threading.Event()

    def _activate_impl(self) -> None:
        pass

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_when is not None and self.fail_when(feed):
            raise RuntimeError("injected failure")
        self.batches.append(feed.shape[0])
        ids = feed.astype(np.float32)
        return np.stack([ids.sum(-1), ids[..., 0], (feed != 0).sum(-1).astype(np.float32)], axis=-1)

    def _deactivate_impl(self) -> None:
        pass


def echo_expected(instance: list[int], seq_len: int = 16) -> list[float]:
    """What EchoBackend answers for one (truncated) instance with pad id 0."""
    kept = list(instance)[:seq_len]
    return [float(sum(kept)), float(kept[0]), float(sum(1 for t in kept if t != 0))]


def edit_manifest(bundle: Path, **changes: Any) -> None:
    """Rewrite fields of a bundle's manifest in place."""
    path = bundle / "muxdeploy.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
