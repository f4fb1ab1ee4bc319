"""Import reference DataMUX checkpoints (Hugging Face `save_pretrained` directories, RoBERTa backbone).

Maps the reference's parameter names onto ours; `transformers` is not needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.models.config import MuxConfig

_CONFIG_KEYS = (
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

_LAYER = re.compile(r"^roberta\.encoder\.layer\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}


def is_reference_dir(path: Path) -> bool:
    """True when `path` is a directory holding a reference config.json."""
    return path.is_dir() and (path / "config.json").is_file()


def config_from_reference(ref: dict[str, Any], task: str | None = None, seq_len: int = 128) -> MuxConfig:
    """Our MuxConfig from a reference config.json dict."""
    if ref.get("hidden_act", "gelu") != "gelu":
        raise UserInputError(f"hidden_act {ref['hidden_act']!r} is not supported; DataMUX uses exact 'gelu'")
    if "num_instances" not in ref:
        raise UserInputError("config.json has no num_instances: this is not a DataMUX checkpoint")
    if task is None:
        arch = " ".join(ref.get("architectures") or [])
        task = "token_classification" if "TokenClassification" in arch else "sequence_classification"
    values = {k: ref[k] for k in _CONFIG_KEYS if k in ref}
    if "id2label" in ref and "num_labels" not in ref:
        values["num_labels"] = len(ref["id2label"])
    elif "num_labels" in ref:
        values["num_labels"] = ref["num_labels"]
    extra = {k: v for k, v in ref.items() if k not in _CONFIG_KEYS}
    return MuxConfig(**values, task=task, seq_len=seq_len, extra={"reference_config": extra})


def labels_from_reference(ref: dict[str, Any]) -> list[str] | None:
    """Label names in id order, when the config carries id2label."""
    id2label = ref.get("id2label")
    if not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def map_reference_state_dict(ref_sd: dict[str, torch.Tensor], config: MuxConfig) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ours (q/k/v fused into in_proj); raise if anything needed is missing."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    head_prefix = "retrieval_head." if config.task == "retrieval" else "demultiplexer."
    for name, tensor in ref_sd.items():
        if name.startswith("roberta.embeddings."):
            rest = name[len("roberta.embeddings.") :]
            if rest in ("position_ids", "token_type_ids"):
                continue
            out[f"embeddings.{rest}"] = tensor
        elif m := _LAYER.match(name):
            k, rest = int(m.group(1)), m.group(2)
            if rest.startswith("attention.self."):
                qkv.setdefault(k, {})[rest[len("attention.self.") :]] = tensor
                continue
            module, _, kind = rest.rpartition(".")
            if module not in _LAYER_NAMES:
                raise UserInputError(
                    f"unexpected reference parameter {name}; the checkpoint is not a RoBERTa DataMUX model"
                )
            out[f"encoder.layers.{k}.{_LAYER_NAMES[module]}.{kind}"] = tensor
        elif name == "instance_embedding":
            out["multiplexer.instance_embedding"] = tensor
        elif name.startswith(head_prefix):
            rest = name[len(head_prefix) :]
            if rest == "bias":  # tied to decoder.bias in the reference
                out.setdefault("head.decoder.bias", tensor)
                continue
            out[f"head.{rest}"] = tensor
    for k, parts in qkv.items():
        try:
            out[f"encoder.layers.{k}.self_attn.in_proj_weight"] = torch.cat(
                [parts["query.weight"], parts["key.weight"], parts["value.weight"]]
            )
            out[f"encoder.layers.{k}.self_attn.in_proj_bias"] = torch.cat(
                [parts["query.bias"], parts["key.bias"], parts["value.bias"]]
            )
        except KeyError as exc:
            raise UserInputError(f"reference layer {k} lacks attention parameter {exc.args[0]}") from None
    if "multiplexer.instance_embedding" not in out:
        raise UserInputError(
            "checkpoint has no instance_embedding; DataMUX draws it at random, so a checkpoint without it "
            "cannot be reproduced. Re-save the model with its instance_embedding parameter"
        )
    return out


def read_reference_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load model.safetensors or pytorch_model.bin (weights only) from a reference directory."""
    st = path / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_path = path / "pytorch_model.bin"
    if bin_path.is_file():
        from muxdeploy.checkpoint import torch_load_weights

        return torch_load_weights(bin_path)
    raise UserInputError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin")


def read_reference_config(path: Path) -> dict[str, Any]:
    """Parse config.json with a clear error."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read {path / 'config.json'}: {exc}") from None
