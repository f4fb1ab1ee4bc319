"""Checkpoint I/O: our `ckpt.pt` (config + state_dict + tokenizer + labels), our model directories
(model.safetensors + config.json + tokenizer.json + provenance.json: the shipped demo models) and reference
directories."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.fsutil import write_bytes_atomic
from muxdeploy.exporters.onnx import ExportSpec
from muxdeploy.importers import datamux, muxplm
from muxdeploy.importers.reference import is_reference_dir, read_reference_config
from muxdeploy.importers.weights import torch_load_weights
from muxdeploy.models import DataMuxTransformer, MuxConfig, build_model

CKPT_FORMAT = "muxdeploy-ckpt"
CKPT_VERSION = 1
# A model directory: config.json {"format": MODEL_DIR_FORMAT, ...} beside model.safetensors, tokenizer.json and
# provenance.json. Unlike a reference directory (a Hugging Face save_pretrained), it is ours end to end.
MODEL_DIR_FORMAT = "muxdeploy-model"
MODEL_DIR_FILES = ("config.json", "model.safetensors", "tokenizer.json", "provenance.json")


@dataclass
class Checkpoint:
    """A loaded model with what travels with it. `kind` is "transformer" or "vision" (then config is a VisionConfig)."""

    config: MuxConfig
    model: DataMuxTransformer
    tokenizer_json: str | None = None
    labels: list[str] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "transformer"

    def export_spec(self) -> ExportSpec:
        """What the ONNX exporter needs to know about this model."""
        c = self.config
        if self.kind == "vision":
            return ExportSpec(
                model=self.model,
                task=c.task,
                num_instances=c.num_instances,
                seq_len=0,
                max_seq_len=0,
                vocab_size=0,
                pad_token_id=0,
                output_dim=c.output_dim,
                config=c.to_dict(),
                labels=self.labels,
                source=self.source,
                kind="vision",
                input_name="images",
                input_dtype="float32",
                instance_shape=c.image_shape,
            )
        return ExportSpec(
            model=self.model,
            task=c.task,
            num_instances=c.num_instances,
            seq_len=c.seq_len,
            max_seq_len=c.max_position_embeddings
            - c.prefix_len
            - (c.pad_token_id + 1 if c.embedding_style == "roberta" else 0),
            vocab_size=c.vocab_size,
            pad_token_id=c.pad_token_id,
            output_dim=c.output_dim,
            config=c.to_dict(),
            tokenizer_json=self.tokenizer_json,
            labels=self.labels,
            source=self.source,
        )


def model_kind(model: torch.nn.Module) -> str:
    """ "vision" for image models, else "transformer" (recorded in ckpt.pt so loading builds the right model)."""
    from muxdeploy.models.vision import VisionDataMux

    return "vision" if isinstance(model, VisionDataMux) else "transformer"


def save_checkpoint(
    path: str | Path,
    model: DataMuxTransformer,
    tokenizer_json: str | None = None,
    labels: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write our ckpt.pt atomically: loadable with torch.load(weights_only=True)."""
    payload = {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "kind": model_kind(model),
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer_json,
        "labels": labels,
        "meta": meta or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    if not path.parent.exists():
        raise UserInputError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        write_bytes_atomic(path, buf.getvalue())
    except OSError as exc:
        raise UserInputError(f"cannot write {path}: {exc.strerror}; choose a writable path with -o") from None


def save_model_dir(
    path: str | Path,
    model: DataMuxTransformer,
    tokenizer_json: str,
    labels: list[str] | None,
    provenance: dict[str, Any],
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write a model directory (see MODEL_DIR_FILES) atomically: floating-point weights stored as `dtype` (the
    shipped models use fp16: half the bytes, and their provenance accuracy is measured on the stored weights).
    An existing directory at `path` is replaced whole."""
    from safetensors.torch import save_file

    path = Path(path)
    if model_kind(model) != "transformer":
        raise UserInputError("model directories hold transformer models; save a vision model with save_checkpoint")
    if not path.parent.exists():
        raise UserInputError(f"cannot write {path}: directory {path.parent} does not exist")
    state = {
        k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    config = {"format": MODEL_DIR_FORMAT, "version": CKPT_VERSION, "kind": model_kind(model)}
    config.update(config=model.config.to_dict(), labels=labels, weights_dtype=str(dtype).removeprefix("torch."))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def is_model_dir(path: Path) -> bool:
    """True for a directory written by `save_model_dir` (its config.json names MODEL_DIR_FORMAT)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == MODEL_DIR_FORMAT
    except (ValueError, AttributeError):
        return False


def _load_model_dir(path: Path, task: str | None, seq_len: int | None) -> Checkpoint:
    from safetensors.torch import load_file

    missing = [f for f in MODEL_DIR_FILES if not (path / f).is_file()]
    if missing:
        raise UserInputError(f"{path} is a muxdeploy model directory without {', '.join(missing)}; copy it whole")
    meta = json.loads((path / "config.json").read_text())
    _check_version(meta, path, "model")
    config = _mux_config(meta["config"], path, task, seq_len)
    state = {
        k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path / "model.safetensors")).items()
    }
    model = _model_from_state(config, state, path)
    provenance = json.loads((path / "provenance.json").read_text())
    return Checkpoint(
        config, model, (path / "tokenizer.json").read_text(), meta.get("labels"), str(path), {"provenance": provenance}
    )


def load_checkpoint(path: str | Path, task: str | None = None, seq_len: int | None = None) -> Checkpoint:
    """Load a ckpt.pt file, a muxdeploy model directory or a reference-format directory into an eval-mode model."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"checkpoint not found: {path}; pass a ckpt.pt file or a reference checkpoint directory")
    if path.is_dir():
        if is_model_dir(path):
            return _load_model_dir(path, task, seq_len)
        return _load_reference_dir(path, task, seq_len)
    payload = torch_load_weights(path)
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise UserInputError(
            f"{path} is a PyTorch file but not a muxdeploy checkpoint (no 'format': '{CKPT_FORMAT}'); "
            "train one with `muxdeploy train` or pass a reference checkpoint directory"
        )
    _check_version(payload, path, "checkpoint")
    if payload.get("kind", "transformer") == "vision":
        return _load_vision(path, payload, task)
    config = _mux_config(payload["config"], path, task, seq_len)
    model = _model_from_state(config, payload["state_dict"], path)
    return Checkpoint(
        config, model, payload.get("tokenizer"), payload.get("labels"), str(path), payload.get("meta") or {}
    )


def _check_version(record: dict[str, Any], path: Path, what: str) -> None:
    """Refuse a file written by a newer muxdeploy (its format version above ours)."""
    if record.get("version", 0) > CKPT_VERSION:
        raise UserInputError(f"{path} has {what} version {record['version']}; upgrade muxdeploy to read it")


def _mux_config(raw: dict[str, Any], path: Path, task: str | None, seq_len: int | None) -> MuxConfig:
    """The stored config, checked against the --task asked for, with --seq-len applied when given."""
    config = MuxConfig.from_dict(raw)
    if task is not None and task != config.task:
        raise UserInputError(f"{path} is a {config.task} model; --task {task} does not apply to it")
    if seq_len is not None:
        config = MuxConfig.from_dict({**config.to_dict(), "seq_len": seq_len})
    return config


def _load_vision(path: Path, payload: dict[str, Any], task: str | None) -> Checkpoint:
    from muxdeploy.models.vision import VisionConfig, build_vision_model

    config = VisionConfig.from_dict(payload["config"])
    if task is not None and task != config.task:
        raise UserInputError(f"{path} is a {config.task} model; --task {task} does not apply to it")
    model = build_vision_model(config)
    _load_strict(model, payload["state_dict"], path)
    return Checkpoint(
        config,
        model,
        None,
        payload.get("labels"),
        str(path),
        payload.get("meta") or {},
        kind="vision",  # type: ignore[arg-type]
    )


def _load_reference_dir(path: Path, task: str | None, seq_len: int | None) -> Checkpoint:
    if not is_reference_dir(path):
        raise UserInputError(
            f"{path} is a directory without config.json; pass a ckpt.pt or a save_pretrained directory"
        )
    importer = muxplm if muxplm.is_muxplm_config(read_reference_config(path)) else datamux
    imported = importer.load(path, task, seq_len)
    model = _model_from_state(imported.config, imported.state_dict, path)
    return Checkpoint(
        imported.config, model, imported.tokenizer_json, imported.labels, str(path), {"format": imported.format}
    )


def _model_from_state(config: MuxConfig, state: dict[str, torch.Tensor], path: Path) -> DataMuxTransformer:
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if "multiplexer.instance_embedding" in missing:
        raise UserInputError(
            f"{path} has no instance_embedding; it is drawn at random at training time, so the model cannot be "
            "reproduced without it. Re-save the checkpoint with that parameter"
        )
    _load_strict(model, state, path)
    return model


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `model` (eval mode), naming the first missing or misshapen parameter."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise UserInputError(f"{path} lacks {len(missing)} parameters the model needs, e.g. {missing[0]}")
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise UserInputError(
                f"{path}: parameter {name} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    model.eval()
