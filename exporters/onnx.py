"""torch -> ONNX: trace a DataMUX model with the fixed N-slot signature and prove the ONNX matches PyTorch."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import (
    REFERENCE_ONNX,
    ROLE_REFERENCE,
    SCHEMA,
    TOKENIZER_NAME,
    Manifest,
    instance_onnx_name,
)
from muxdeploy.exporters.instance_batch import write_instance_batch
from muxdeploy.exporters.parity import Comparison, ParityError, parity_inputs, run_session
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import default_filler

PARITY_TOLERANCE = 1e-4


class _GroupedModel(torch.nn.Module):
    """The exported signature: input_ids int32 [B, N, L] (or images float32 [B, N, C, H, W]) -> float32 logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


@dataclass
class ExportSpec:
    """What the exporter needs to know about a model (the model side builds this from a checkpoint)."""

    model: torch.nn.Module
    task: str
    num_instances: int
    seq_len: int
    max_seq_len: int
    vocab_size: int
    pad_token_id: int
    output_dim: int
    config: dict[str, Any]
    tokenizer_json: str | None = None
    labels: list[str] | None = None
    source: str = ""
    kind: str = "transformer"
    # Per-instance input: token ids [L] by default; image models set input_name="images",
    # input_dtype="float32" and instance_shape=(C, H, W) (then seq_len/vocab/pad do not apply).
    input_name: str = "input_ids"
    input_dtype: str = "int32"
    instance_shape: tuple[int, ...] | None = None

    def instance_dims(self, seq_len: int) -> tuple[int, ...]:
        """Shape of one instance in the exported graph."""
        return tuple(self.instance_shape) if self.instance_shape is not None else (seq_len,)

    def filler(self, seq_len: int) -> np.ndarray:
        """The instance that fills empty slots: a row of pad tokens, or an all-zero image."""
        if self.instance_shape is not None:
            return np.zeros(self.instance_shape, dtype=np.dtype(self.input_dtype))
        return default_filler(seq_len, self.pad_token_id)

    def parity_inputs(self, num_instances: int, seq_len: int, batch: int, seed: int = 0) -> np.ndarray:
        """Realistic [B, N, ...] test inputs for the parity check."""
        if self.instance_shape is not None:
            rng = np.random.default_rng(seed)
            shape = (batch, num_instances, *self.instance_shape)
            return rng.random(shape, dtype=np.float32).astype(np.dtype(self.input_dtype))
        return parity_inputs(self.vocab_size, self.pad_token_id, num_instances, seq_len, batch, seed=seed)


@dataclass
class ExportResult:
    """What `export_bundle` wrote and measured."""

    bundle: Path
    onnx_path: Path
    manifest: Manifest
    max_abs_diff: float


def prepare_bundle_dir(out_dir: Path) -> None:
    """Create the bundle directory or fail with a one-line error naming the fix."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"output {out_dir} exists and is not a directory; choose another path with -o")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-")
        probe.close()
    except OSError as exc:
        raise UserInputError(
            f"cannot write to output directory {out_dir}: {exc.strerror}; choose a writable path with -o"
        ) from None


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's progress chatter; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    num_instances: int,
    seq_len: int,
    max_batch: int,
    opset: int,
    example: torch.Tensor | None = None,
    input_name: str = "input_ids",
) -> None:
    """Export `model` to a single ONNX file at `path` with input_ids int32 [B, N, L], B dynamic in 1..max_batch.

    `example` (a [2, N, ...] tensor) and `input_name` override the token signature, e.g. for images.
    """
    wrapper = _GroupedModel(model).eval()
    if example is None:
        example = torch.zeros((2, num_instances, seq_len), dtype=torch.int32)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    with _quiet_export(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch}},
            optimize=True,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def measure_parity(model: torch.nn.Module, onnx_path: Path, feeds: list[np.ndarray]) -> float:
    """Max abs difference between onnxruntime CPU and PyTorch over the given [B, N, L] inputs."""
    session = make_session(onnx_path)
    comparison = Comparison("ONNX", "PyTorch's")
    for feed in feeds:
        with torch.no_grad():
            expected = model(torch.from_numpy(feed)).numpy()
        comparison.add(expected, run_session(session, feed))
    return comparison.max_abs_diff


def export_bundle(
    spec: ExportSpec,
    num_instances: int,
    out_dir: str | Path,
    seq_len: int | None = None,
    max_batch: int = 64,
    opset: int = 18,
    tolerance: float = PARITY_TOLERANCE,
    instance_batch: bool = False,
) -> ExportResult:
    """Write model.onnx + muxdeploy.json (+ tokenizer.json) into `out_dir` after proving parity.

    With `instance_batch`, also write model.instance_batch.onnx (input_ids [M, L], M instances),
    built around model.onnx and proven equal to it (exporters/instance_batch.py).
    """
    if num_instances != spec.num_instances:
        raise UserInputError(
            f"--n {num_instances} does not match the checkpoint's num_instances {spec.num_instances}; "
            f"use --n {spec.num_instances} (N is fixed when a DataMUX model is trained)"
        )
    if opset < 18 or opset > 22:
        raise UserInputError(
            f"--opset {opset} is not supported; use 18..22 (>= 23 emits Attention ops older TensorRT cannot parse)"
        )
    if max_batch < 1:
        raise UserInputError(f"--max-batch must be >= 1, got {max_batch}")
    seq_len = seq_len or spec.seq_len
    if spec.instance_shape is None and not 1 <= seq_len <= spec.max_seq_len:
        raise UserInputError(
            f"--seq-len {seq_len} is outside what the model's position embeddings allow (1..{spec.max_seq_len})"
        )
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    prepare_bundle_dir(out_dir)
    model = spec.model.eval()
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    done = False
    try:
        onnx_tmp = staging / REFERENCE_ONNX
        example = torch.from_numpy(np.stack([spec.filler(seq_len)] * 2 * num_instances)).reshape(
            2, num_instances, *spec.instance_dims(seq_len)
        )
        # the graph is traced from the model's export form where it has one (same function, fuser-friendly
        # layout: muxdeploy.models.export_form); parity below is measured against the model itself
        traced = model.for_export().eval() if hasattr(model, "for_export") else model
        export_onnx(traced, onnx_tmp, num_instances, seq_len, max_batch, opset, example, spec.input_name)
        batches = sorted({1, min(3, max_batch), min(max_batch, 8)})
        feeds = [spec.parity_inputs(num_instances, seq_len, b, seed=b) for b in batches]
        diff = measure_parity(model, onnx_tmp, feeds)
        if not diff <= tolerance:
            raise ParityError(
                f"exported ONNX differs from PyTorch by {diff:.3g} (> {tolerance:g}); "
                "report this with the checkpoint's config, or export with another --opset"
            )
        manifest = build_manifest(spec, seq_len, max_batch, opset, diff, feeds)
        instance_facts = None
        if instance_batch:
            instance_facts = write_instance_batch(onnx_tmp, staging / instance_onnx_name(), manifest, tolerance)
        if spec.tokenizer_json:
            (staging / TOKENIZER_NAME).write_text(spec.tokenizer_json)
            manifest.data["tokenizer"] = TOKENIZER_NAME
        for item in staging.iterdir():
            os.replace(item, out_dir / item.name)
        manifest.bundle = out_dir
        manifest.add_artifact(REFERENCE_ONNX, "onnx", "fp32", opset=opset, role=ROLE_REFERENCE)
        if instance_facts is not None:
            manifest.add_artifact(instance_onnx_name(), "onnx", "fp32", **instance_facts)
        manifest.save(out_dir)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # a failed first export leaves no empty bundle directory behind
    return ExportResult(out_dir, out_dir / REFERENCE_ONNX, manifest, diff)


def output_shape(task: str, num_instances: int, seq_len: int, out_dim: int) -> list[int | str]:
    """Symbolic output shape for the manifest."""
    if task in ("sequence_classification", "image_classification"):
        return ["B", num_instances, out_dim]
    return ["B", num_instances, seq_len, out_dim]


def _version() -> str:
    try:
        return metadata.version("muxdeploy")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_manifest(
    spec: ExportSpec,
    seq_len: int,
    max_batch: int,
    opset: int,
    diff: float,
    feeds: list[np.ndarray],
) -> Manifest:
    """The manifest dict for a freshly exported FP32 bundle."""
    pad, n = spec.pad_token_id, spec.num_instances
    image = spec.instance_shape is not None
    data = {
        "schema": SCHEMA,
        "muxdeploy_version": _version(),
        "model": {
            "kind": spec.kind,
            "task": spec.task,
            "source": spec.source,
            "config": spec.config,
        },
        "num_instances": n,
        "seq_len": None if image else seq_len,
        "max_batch": max_batch,
        "opset": opset,
        "inputs": [
            {"name": spec.input_name, "dtype": spec.input_dtype, "shape": ["B", n, *spec.instance_dims(seq_len)]}
        ],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": output_shape(spec.task, n, seq_len, spec.output_dim)}
        ],
        "pad_token_id": None if image else pad,
        "vocab_size": None if image else spec.vocab_size,
        "filler": spec.filler(seq_len).tolist(),
        "labels": spec.labels,
        "tokenizer": None,
        "artifacts": {},
        "parity": {
            "export": {
                "max_abs_diff": diff,
                "tolerance": PARITY_TOLERANCE,
                "reference": "pytorch-fp32-cpu",
                "candidate": "onnxruntime-cpu",
                "groups": int(sum(f.shape[0] for f in feeds)),
            }
        },
    }
    return Manifest(data)
