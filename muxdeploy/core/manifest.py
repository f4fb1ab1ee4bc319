"""The bundle manifest (`muxdeploy.json`) and the bundle's layout: every artifact's file name and the one query.

Unknown keys are kept on load and written back on save; a newer schema than this reader knows is
a clear error.

Layout of a bundle directory (every name below comes from this module):

    muxdeploy.json                          the manifest
    tokenizer.json                          when the checkpoint carries one
    model.onnx                              FP32 grouped graph [B, N, ...] from `muxdeploy export` (role "reference")
    model.<p>.onnx                          typed grouped graph from `build-engine --<p>` (role "typed")
    model[.<p>].ort.onnx                    onnxruntime's fused graph (role "ort-optimized")
    model.instance_batch[.<p>].onnx         instance-batched graph [M, L] (role "instance_batch", signature "instances")
    engine.<p>[.rtx].plan                   TensorRT (for RTX) engine of the grouped graph
    engine.instances.<p>[.rtx].plan         TensorRT (for RTX) engine of the instance-batched graph

`[.<p>]` is left out for fp32. Artifacts without a "signature" key take grouped [B, N, ...] inputs.
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
TOKENIZER_NAME = "tokenizer.json"
DEFAULT_BUNDLE = "mux_model"
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
# artifact "format" values of engines (the tensorrt backend runs both; RTX plans need TensorRT for RTX)
ENGINE_FORMATS = ("tensorrt", "tensorrt-rtx")
# artifact "signature": grouped [B, N, ...] (no "signature" key) or instance-batched [M, ...]
GROUPED = "grouped"
INSTANCES = "instances"
# artifact "role" of ONNX files
ROLE_REFERENCE = "reference"
ROLE_TYPED = "typed"
ROLE_ORT = "ort-optimized"
ROLE_INSTANCE_BATCH = "instance_batch"


def _file_name(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _checked(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def _unless_fp32(precision: str) -> str | None:
    """The precision as it appears in an ONNX file name: left out for fp32."""
    return None if _checked(precision) == "fp32" else precision


def onnx_name(precision: str = "fp32") -> str:
    """The grouped graph of a precision: model.onnx (the FP32 export) or model.<p>.onnx (build-engine)."""
    return _file_name("model", _unless_fp32(precision), "onnx")


REFERENCE_ONNX = onnx_name("fp32")


def ort_onnx_name(precision: str) -> str:
    """onnxruntime's fused graph of a precision: model.ort.onnx or model.<p>.ort.onnx."""
    return _file_name("model", _unless_fp32(precision), "ort", "onnx")


def instance_onnx_name(precision: str = "fp32") -> str:
    """The instance-batched graph of a precision: model.instance_batch.onnx or model.instance_batch.<p>.onnx."""
    return _file_name("model", "instance_batch", _unless_fp32(precision), "onnx")


def engine_name(precision: str, flavor: str = "tensorrt", signature: str = GROUPED) -> str:
    """A TensorRT engine: engine.<p>.plan, engine.<p>.rtx.plan (TensorRT for RTX) or engine.instances.<p>[.rtx].plan."""
    instances = INSTANCES if signature == INSTANCES else None
    rtx = None if flavor == "tensorrt" else "rtx"
    return _file_name("engine", instances, _checked(precision), rtx, "plan")


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

    def artifacts_where(
        self,
        format: str | tuple[str, ...] | None = None,
        precision: str | tuple[str, ...] | None = None,
        role: str | tuple[str | None, ...] | None = None,
        signature: str | None = None,
    ) -> list[str]:
        """File names of the artifacts matching every given field, in manifest order.

        Each field is a value or a tuple of accepted values; None accepts anything. `role` may list None for
        artifacts that record no role; `signature` is GROUPED (artifacts without the key) or INSTANCES.
        """

        def fits(value: Any, wanted: Any) -> bool:
            return wanted is None or (value in wanted if isinstance(wanted, tuple) else value == wanted)

        return [
            name
            for name, facts in self.artifacts.items()
            if fits(facts.get("format"), format)
            and fits(facts.get("precision"), precision)
            and fits(facts.get("role"), role)
            and fits(facts.get("signature") or GROUPED, signature)
        ]

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
