"""Import reference DataMUX checkpoints (Hugging Face `save_pretrained` directories, RoBERTa backbone).

Maps the reference's parameter names onto ours; `transformers` is not needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.importers import reference
from muxdeploy.models.config import MuxConfig

_LAYER = re.compile(r"^roberta\.encoder\.layer\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}


def load(path: Path, task: str | None = None, seq_len: int | None = None) -> reference.ImportedModel:
    """Import a DataMUX directory (config.json and weights) in our terms; seq_len defaults to the reference's 128."""
    return reference.import_directory(path, task, seq_len, config_from_reference, map_reference_state_dict, "datamux")


def config_from_reference(
    ref: dict[str, Any], task: str | None = None, seq_len: int = reference.DEFAULT_SEQ_LEN
) -> MuxConfig:
    """Our MuxConfig from a reference config.json dict."""
    reference.require_exact_gelu(ref, "DataMUX")
    if "num_instances" not in ref:
        raise UserInputError("config.json has no num_instances: this is not a DataMUX checkpoint")
    return MuxConfig(
        **reference.shared_config_values(ref),
        task=reference.resolve_task(ref, task),
        seq_len=seq_len,
        extra={"reference_config": reference.other_config_values(ref)},
    )


def map_reference_state_dict(ref_sd: dict[str, torch.Tensor], config: MuxConfig) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ours (q/k/v fused into in_proj); raise if a layer's q/k/v is incomplete.

    Parameters the model needs but the file lacks (instance_embedding among them) are named when the
    checkpoint loader builds the model.
    """
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
    return out
