"""Named model sizes for training and benchmarks."""

from __future__ import annotations

from typing import Any

from muxdeploy.core.errors import UserInputError
from muxdeploy.models.config import MuxConfig

BERT_VOCAB_SIZE = 30522
BERT_PAD_ID = 0

# Geometry per preset: layers, width, heads, FFN width.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256},
    "small": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
}


def bert_special_ids(num_instances: int) -> dict[str, Any]:
    """Index-demux special ids inside the BERT vocabulary: [unused0] fills the prefix, [unused1] is CLS,
    [unused2..] mark the slots (the reference's RoBERTa ids 50000/49923 do not exist in BERT's vocabulary)."""
    if num_instances > 990:
        raise UserInputError(f"N={num_instances} needs more [unusedK] tokens than BERT's vocabulary has (990)")
    return {"mux_prefix_filler_id": 1, "mux_cls_id": 2, "mux_slot_ids": [3 + i for i in range(num_instances)]}


def preset_config(
    name: str,
    num_instances: int,
    task: str = "sequence_classification",
    num_labels: int = 2,
    seq_len: int = 64,
    vocab_size: int = BERT_VOCAB_SIZE,
    pad_token_id: int = BERT_PAD_ID,
    **overrides: Any,
) -> MuxConfig:
    """A MuxConfig of a named size for the BERT WordPiece vocabulary (or another vocab with BERT-like ids)."""
    if name not in PRESETS:
        raise UserInputError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {
        **PRESETS[name],
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "num_instances": num_instances,
        "task": task,
        "num_labels": num_labels,
        "seq_len": seq_len,
        "max_position_embeddings": seq_len + num_instances + 1 + pad_token_id + 1,
        "layer_norm_eps": 1e-5,
        **bert_special_ids(num_instances),
    }
    values.update(overrides)
    return MuxConfig(**values)
