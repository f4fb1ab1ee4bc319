"""Import MUX-PLMs checkpoints (princeton-nlp/datamux-pretraining `save_pretrained` directories, BERT or ELECTRA).

Their forward pass, as our model computes it: BERT embeddings (positions from 0, token type 0) per instance,
the DataMUX multiplexer, BERT embeddings again on the mixture (no attention mask), the BERT encoder, then
`index` demux (prefix ids: filler 680, slot i 678 - i, CLS 101) or `index_pos` RSA-demux (first token
overwritten by CLS 101) and a linear classifier. MUX-ELECTRA multiplexes at `embedding_size`, projects to
`hidden_size` after the second embedding pass (`embeddings_project`), keeps the first token under index_pos, and
classifies sequences with dense -> GELU -> out_proj. `transformers` is not needed.
"""

from __future__ import annotations

from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.importers import datamux
from muxdeploy.models.config import MuxConfig

PREFIX_FILLER_ID = 680
CLS_ID = 101
SUPPORTED_MUXING = (
    "gaussian_hadamard",
    "binary_hadamard",
    "random_ortho",
    "random_ortho_low_rank",
    "gaussian_attention_v2",
)
_MUXING_LAYERS = {"muxing_attention": 100000, "muxing_attention_2": 100001}  # renamed through the layer mapping
_EXTRA_KEYS = ("num_hidden_demux_layers",)


def is_muxplm_config(ref: dict[str, Any]) -> bool:
    """True for a MUX-PLMs config.json (a BERT or ELECTRA model_type with num_instances)."""
    return ref.get("model_type") in ("bert", "electra") and "num_instances" in ref


def config_from_muxplm(ref: dict[str, Any], task: str | None = None, seq_len: int = 128) -> MuxConfig:
    """Our MuxConfig from a MUX-PLMs config.json dict; refuses what we cannot reproduce exactly."""
    electra = ref.get("model_type") == "electra"
    variant = ref.get("muxing_variant", "gaussian_hadamard")
    if variant not in SUPPORTED_MUXING:
        raise UserInputError(
            f"muxing_variant {variant!r} is not supported yet for MUX-PLMs; supported: {', '.join(SUPPORTED_MUXING)}"
        )
    demux = ref.get("demuxing_variant", "index")
    if demux not in ("index", "index_pos"):
        raise UserInputError(f"MUX-PLM demuxing_variant {demux!r} is unknown; expected index or index_pos")
    if ref.get("position_embedding_type", "absolute") != "absolute":
        raise UserInputError("only absolute position embeddings are supported (config position_embedding_type)")
    if task is None:
        arch = " ".join(ref.get("architectures") or [])
        task = "token_classification" if "TokenClassification" in arch else "sequence_classification"
    if task == "retrieval":
        raise UserInputError("MUX-PLM checkpoints export sequence or token classification heads, not retrieval")
    if ref.get("hidden_act", "gelu") != "gelu":
        raise UserInputError(f"hidden_act {ref['hidden_act']!r} is not supported; MUX-BERT uses exact 'gelu'")
    values = {k: ref[k] for k in datamux._CONFIG_KEYS if k in ref}
    if "num_labels" in ref:
        values["num_labels"] = ref["num_labels"]
    elif "id2label" in ref:
        values["num_labels"] = len(ref["id2label"])
    n = int(ref["num_instances"])
    values.update(
        task=task,
        seq_len=seq_len,
        pad_token_id=ref.get("pad_token_id", 0),
        extra={"reference_config": {k: v for k, v in ref.items() if k not in datamux._CONFIG_KEYS}},
        embedding_style="bert",
        family="muxplm_electra" if electra else "muxplm",
        embedding_size=ref.get("embedding_size", 128) if electra else None,
        layer_norm_eps=ref.get("layer_norm_eps", 1e-12),
        type_vocab_size=ref.get("type_vocab_size", 2),
        num_hidden_demux_layers=ref.get("num_hidden_demux_layers", 2),
        mux_prefix_filler_id=PREFIX_FILLER_ID,
        mux_cls_id=CLS_ID,
        mux_slot_ids=[PREFIX_FILLER_ID - (i + 2) for i in range(n)],
    )
    return MuxConfig.from_dict(values)


def map_muxplm_state_dict(ref_sd: dict[str, torch.Tensor], config: MuxConfig) -> dict[str, torch.Tensor]:
    """Rename a MUX-BERT state dict to ours: backbone via the DataMUX mapping, heads by their own names."""
    prefix = "electra." if config.family == "muxplm_electra" else "bert."
    backbone = {"roberta." + k[len(prefix) :]: v for k, v in ref_sd.items() if k.startswith(prefix)}
    if "instance_embedding" in ref_sd:
        backbone["instance_embedding"] = ref_sd["instance_embedding"]
    for name, tensor in ref_sd.items():  # the contextual multiplexer's two BERT layers: same names as encoder layers
        module, _, rest = name.partition(".")
        if module in _MUXING_LAYERS:
            backbone[f"roberta.encoder.layer.{_MUXING_LAYERS[module]}.{rest}"] = tensor
    out = {k: v for k, v in datamux.map_reference_state_dict(backbone, config).items() if not k.startswith("head.")}
    for module, index in _MUXING_LAYERS.items():
        for key in [k for k in out if k.startswith(f"encoder.layers.{index}.")]:
            out[f"multiplexer.{module}.{key[len(f'encoder.layers.{index}.') :]}"] = out.pop(key)
    for name, tensor in ref_sd.items():
        if name.startswith("electra.embeddings_project."):
            out[name[len("electra.") :]] = tensor
        elif name.startswith(("demux_module.", "classifier.")):
            out[f"head.{name}"] = tensor
        elif name.startswith("demultiplexer.demux_module."):  # the shared module, saved twice by .bin files
            out.setdefault(f"head.{name[len('demultiplexer.') :]}", tensor)
        elif name.startswith("demultiplexer."):
            out[f"head.{name}"] = tensor
    return out
