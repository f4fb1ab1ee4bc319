"""What both reference formats share (DataMUX and MUX-PLMs `save_pretrained` directories): reading config.json and
the weights, the config keys that map one to one onto MuxConfig, the task and label names, and what an importer's
`load` returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.importers.weights import torch_load_weights
from muxdeploy.models.config import MuxConfig

# config.json keys that keep their name and meaning in MuxConfig
CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "num_instances",
    "muxing_variant",
    "demuxing_variant",
    "gaussian_hadamard_norm",
    "binary_hadamard_epsilon",
    "learn_muxing",
)
# the sequence length the reference trains at; a reference directory does not record it
DEFAULT_SEQ_LEN = 128


@dataclass
class ImportedModel:
    """A reference directory turned into our terms: config, our-named state dict, labels, tokenizer, format name."""

    config: MuxConfig
    state_dict: dict[str, torch.Tensor]
    labels: list[str] | None
    tokenizer_json: str | None
    format: str


def is_reference_dir(path: Path) -> bool:
    """True when `path` is a directory holding a reference config.json."""
    return path.is_dir() and (path / "config.json").is_file()


def read_reference_config(path: Path) -> dict[str, Any]:
    """Parse config.json with a clear error."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read {path / 'config.json'}: {exc}") from None


def read_reference_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load model.safetensors or pytorch_model.bin (weights only) from a reference directory."""
    st = path / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_path = path / "pytorch_model.bin"
    if bin_path.is_file():
        return torch_load_weights(bin_path)
    raise UserInputError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin")


def require_exact_gelu(ref: dict[str, Any], model_name: str) -> None:
    """Refuse any hidden_act but the exact (erf) GELU that `model_name` uses and our layers compute."""
    if ref.get("hidden_act", "gelu") != "gelu":
        raise UserInputError(f"hidden_act {ref['hidden_act']!r} is not supported; {model_name} uses exact 'gelu'")


def resolve_task(ref: dict[str, Any], task: str | None) -> str:
    """`task` when given, else the one config.json's architectures name (token or sequence classification)."""
    if task is not None:
        return task
    arch = " ".join(ref.get("architectures") or [])
    return "token_classification" if "TokenClassification" in arch else "sequence_classification"


def shared_config_values(ref: dict[str, Any]) -> dict[str, Any]:
    """The CONFIG_KEYS present in config.json, plus num_labels (given, or counted from id2label)."""
    values = {k: ref[k] for k in CONFIG_KEYS if k in ref}
    if "num_labels" in ref:
        values["num_labels"] = ref["num_labels"]
    elif "id2label" in ref:
        values["num_labels"] = len(ref["id2label"])
    return values


def other_config_values(ref: dict[str, Any]) -> dict[str, Any]:
    """Everything in config.json beyond CONFIG_KEYS (kept in MuxConfig.extra as the reference config)."""
    return {k: v for k, v in ref.items() if k not in CONFIG_KEYS}


def labels_from_reference(ref: dict[str, Any]) -> list[str] | None:
    """Label names in id order, when the config carries id2label."""
    id2label = ref.get("id2label")
    if not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def import_directory(
    path: Path,
    task: str | None,
    seq_len: int | None,
    make_config: Callable[[dict[str, Any], str | None, int], MuxConfig],
    map_state_dict: Callable[[dict[str, torch.Tensor], MuxConfig], dict[str, torch.Tensor]],
    fmt: str,
) -> ImportedModel:
    """What every importer's `load` does, with its own config and state-dict mapping: read config.json (seq_len
    defaults to DEFAULT_SEQ_LEN), rename the weights, and add the directory's tokenizer.json and label names."""
    ref = read_reference_config(path)
    config = make_config(ref, task, seq_len or DEFAULT_SEQ_LEN)
    state_dict = map_state_dict(read_reference_weights(path), config)
    tok = path / "tokenizer.json"
    tokenizer_json = tok.read_text() if tok.is_file() else None
    # the retrieval head predicts vocabulary ids, so the task's label names do not apply to its outputs
    labels = None if config.task == "retrieval" else labels_from_reference(ref)
    return ImportedModel(config, state_dict, labels, tokenizer_json, fmt)
