"""The bundle manifest (`muxdeploy.json`): everything a runtime needs to know, versioned.

Unknown keys are kept on load and written back on save; a newer schema than this reader knows is
a clear error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import ManifestError
from muxdeploy.core.fsutil import write_json_atomic

SCHEMA = 1
MANIFEST_NAME = "muxdeploy.json"
DEFAULT_BUNDLE = "mux_model"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Manifest:
    """A bundle's manifest. `data` is the JSON dict; accessors cover the fields runtimes read."""

    def __init__(self, data: dict[str, Any], bundle: str | Path | None = None) -> None:
        self.data = data
        self.bundle = Path(bundle) if bundle is not None else None

    # ---- load / save -------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle: str | Path) -> Manifest:
        """Read `bundle/muxdeploy.json`, checking the schema version."""
        bundle = Path(bundle)
        path = bundle / MANIFEST_NAME
        if not bundle.is_dir():
            raise ManifestError(
                f"bundle directory not found: {bundle}; create one with `muxdeploy export CKPT -o {bundle}`"
            )
        if not path.is_file():
            raise ManifestError(
                f"{bundle} has no {MANIFEST_NAME}; it is not a muxdeploy bundle (run `muxdeploy export`)"
            )
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
        if not isinstance(data, dict) or "schema" not in data:
            raise ManifestError(f"{path} has no 'schema' field; it is not a muxdeploy manifest")
        if not isinstance(data["schema"], int) or data["schema"] > SCHEMA:
            raise ManifestError(
                f"{path} uses manifest schema {data['schema']}, newer than this muxdeploy reads ({SCHEMA}); "
                "upgrade muxdeploy (pip install -U muxdeploy)"
            )
        for key in ("num_instances", "seq_len", "inputs", "outputs"):
            if key not in data:
                raise ManifestError(f"{path} lacks required field {key!r}; re-export the bundle")
        return cls(data, bundle)

    def save(self, bundle: str | Path | None = None) -> Path:
        """Write the manifest atomically into the bundle directory."""
        bundle = Path(bundle) if bundle is not None else self.bundle
        if bundle is None:
            raise ValueError("no bundle directory to save the manifest into")
        path = bundle / MANIFEST_NAME
        write_json_atomic(path, self.data)
        self.bundle = bundle
        return path

    # ---- accessors -----------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return int(self.data["num_instances"])

    @property
    def seq_len(self) -> int:
        """Tokens per instance (0 for image bundles, whose manifest holds null)."""
        return int(self.data["seq_len"] or 0)

    @property
    def task(self) -> str:
        return str(self.data["model"]["task"])

    @property
    def model_kind(self) -> str:
        return str(self.data["model"].get("kind", "transformer"))

    @property
    def max_batch(self) -> int:
        return int(self.data.get("max_batch", 64))

    @property
    def pad_token_id(self) -> int:
        return int(self.data.get("pad_token_id") or 0)

    @property
    def vocab_size(self) -> int | None:
        v = self.data.get("vocab_size")
        return int(v) if v is not None else None

    @property
    def labels(self) -> list[str] | None:
        return self.data.get("labels")

    @property
    def filler(self) -> np.ndarray:
        """The instance that fills empty slots (dtype of the model input)."""
        inp = self.data["inputs"][0]
        return np.asarray(self.data["filler"], dtype=np.dtype(inp["dtype"]))

    @property
    def input_name(self) -> str:
        return str(self.data["inputs"][0]["name"])

    @property
    def output_name(self) -> str:
        return str(self.data["outputs"][0]["name"])

    @property
    def tokenizer_file(self) -> Path | None:
        name = self.data.get("tokenizer")
        if not name or self.bundle is None:
            return None
        return self.bundle / name

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("artifacts", {})

    def artifact_path(self, name: str) -> Path:
        """Absolute path of an artifact file named in the manifest."""
        if self.bundle is None:
            raise ValueError("manifest has no bundle directory")
        return self.bundle / name

    def find_artifact(self, fmt: str, precision: str | None = None) -> str | None:
        """File name of the first artifact of this format (and precision), or None."""
        for name, facts in self.artifacts.items():
            if facts.get("format") == fmt and (precision is None or facts.get("precision") == precision):
                return name
        return None

    def add_artifact(self, name: str, fmt: str, precision: str, **facts: Any) -> dict[str, Any]:
        """Record a file in the bundle with its sha256 (the file must already be in place)."""
        entry = {"format": fmt, "precision": precision, "sha256": sha256_file(self.artifact_path(name)), **facts}
        self.artifacts[name] = entry
        return entry

    def verify_artifact(self, name: str) -> Path:
        """Path of an artifact after checking it exists and matches its recorded sha256."""
        path = self.artifact_path(name)
        if not path.is_file():
            raise ManifestError(f"{path} is missing; rebuild it (muxdeploy export / build-engine)")
        recorded = self.artifacts.get(name, {}).get("sha256")
        if recorded and sha256_file(path) != recorded:
            raise ManifestError(
                f"{path} does not match the sha256 in {MANIFEST_NAME}: it was changed or corrupted; rebuild it"
            )
        return path
