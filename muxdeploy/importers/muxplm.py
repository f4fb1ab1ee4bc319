"""Import MUX-PLMs checkpoints (princeton-nlp/datamux-pretraining `save_pretrained` directories, BERT or ELECTRA).

Their forward pass, as our model computes it: BERT embeddings (positions from 0, token type 0) per instance,
the DataMUX multiplexer, BERT embeddings again on the mixture (no attention mask), the BERT encoder, then
`index` demux (prefix ids: filler 680, slot i 678 - i, CLS 101) or `index_pos` RSA-demux (first token
overwritten by CLS 101) and a linear classifier. MUX-ELECTRA multiplexes at `embedding_size`, projects to
`hidden_size` after the second embedding pass (`embeddings_project`), keeps the first token under index_pos, and
classifies sequences with dense -> GELU -> out_proj. `transformers` is not needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError
from muxdeploy.importers import reference
from muxdeploy.importers.datamux import map_reference_state_dict
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


def is_muxplm_config(ref: dict[str, Any]) -> bool:
    """True for a MUX-PLMs config.json (a BERT or ELECTRA model_type with num_instances)."""
    return ref.get("model_type") in ("bert", "electra") and "num_instances" in ref


def load(path: Path, task: str | None = None, seq_len: int | None = None) -> reference.ImportedModel:
    """Import a MUX-PLMs directory (config.json and weights) in our terms; seq_len defaults to the reference's 128."""
    return reference.import_directory(path, task, seq_len, config_from_muxplm, map_muxplm_state_dict, "muxplm")


def config_from_muxplm(
    ref: dict[str, Any], task: str | None = None, seq_len: int = reference.DEFAULT_SEQ_LEN
) -> MuxConfig:
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
    task = reference.resolve_task(ref, task)
    if task == "retrieval":
        raise UserInputError("MUX-PLM checkpoints export sequence or token classification heads, not retrieval")
    reference.require_exact_gelu(ref, "MUX-BERT")
    values = reference.shared_config_values(ref)
    n = int(ref["num_instances"])
    values.update(
        task=task,
        seq_len=seq_len,
        pad_token_id=ref.get("pad_token_id", 0),
        extra={"reference_config": reference.other_config_values(ref)},
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
    out = {k: v for k, v in map_reference_state_dict(backbone, config).items() if not k.startswith("head.")}
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
