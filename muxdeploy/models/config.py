"""The configuration of a DataMUX transformer: RoBERTa geometry plus the multiplexing fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from muxdeploy.core.errors import UserInputError

MUXING_VARIANTS = ("gaussian_hadamard", "binary_hadamard", "random_ortho", "random_ortho_low_rank")
DEMUXING_VARIANTS = ("index", "mlp")
# MUX-PLMs add a contextual multiplexer (models/contextual_mux.py) and RSA-demux; only their importer sets these.
MUXPLM_MUXING_VARIANTS = (*MUXING_VARIANTS, "gaussian_attention_v2")
MUXPLM_DEMUXING_VARIANTS = ("index", "index_pos")
EMBEDDING_STYLES = ("roberta", "bert")
FAMILIES = ("datamux", "muxplm", "muxplm_electra")
TASKS = ("sequence_classification", "token_classification", "retrieval")

# Token ids the reference (RoBERTa vocabulary) uses for the index-demux prefix and the CLS token.
REFERENCE_PREFIX_FILLER_ID = 50000
REFERENCE_CLS_ID = 49923


@dataclass
class MuxConfig:
    """Everything that fixes a DataMUX transformer's forward pass.

    The reference's config.json fields (RoBERTa geometry plus num_instances N, the muxing and demuxing
    variants and their parameters), the task and label count, the special ids of the index-demux prefix, and the
    sequence length the model was trained at: there is no attention mask, so predictions depend on the padded
    length and every instance is padded to exactly seq_len. The values of `instance_embedding` are not here:
    they are a parameter of the state dict, restored from the checkpoint.
    """

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    num_instances: int = 1
    muxing_variant: str = "gaussian_hadamard"
    demuxing_variant: str = "index"
    gaussian_hadamard_norm: float = 1.0
    binary_hadamard_epsilon: float = 0.0
    learn_muxing: bool = False
    task: str = "sequence_classification"
    num_labels: int = 2
    # Special token ids. Defaults are the reference's RoBERTa ids; slot i of the index prefix
    # is mux_slot_ids[i], by default vocab_size - (i + 2) as in the reference.
    mux_prefix_filler_id: int = REFERENCE_PREFIX_FILLER_ID
    mux_cls_id: int = REFERENCE_CLS_ID
    mux_slot_ids: list[int] | None = None
    # Sequence length the model was trained at (instances are padded to exactly this length).
    seq_len: int = 128
    # "bert": position ids from 0 in both embedding passes (MUX-PLMs); "roberta": after padding_idx (DataMUX).
    embedding_style: str = "roberta"
    # "muxplm": MUX-PLMs' demux heads (demultiplexer + classifier; index_pos RSA-demux).
    family: str = "datamux"
    num_hidden_demux_layers: int = 2
    # ELECTRA: embeddings (and the multiplexer) at this width, then embeddings_project to hidden_size.
    embedding_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def slot_ids(self) -> list[int]:
        """Token id that marks slot i in the index-demux prefix."""
        if self.mux_slot_ids is not None:
            return list(self.mux_slot_ids)
        return [self.vocab_size - (i + 2) for i in range(self.num_instances)]

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings and the multiplexer (ELECTRA's embedding_size, else hidden_size)."""
        return self.embedding_size or self.hidden_size

    @property
    def prefix_len(self) -> int:
        """Tokens the model prepends to every instance (N + 1 for index demux, 0 for MLP)."""
        return self.num_instances + 1 if self.demuxing_variant == "index" else 0

    @property
    def output_dim(self) -> int:
        """Size of the last output axis: labels, or the vocabulary for retrieval."""
        return self.vocab_size if self.task == "retrieval" else self.num_labels

    def validate(self) -> None:
        """Raise UserInputError naming the first field that makes no sense."""
        if self.muxing_variant not in MUXPLM_MUXING_VARIANTS:
            raise UserInputError(
                f"unknown muxing_variant {self.muxing_variant!r}; use one of {', '.join(MUXING_VARIANTS)}"
            )
        if self.demuxing_variant not in (*DEMUXING_VARIANTS, *MUXPLM_DEMUXING_VARIANTS):
            raise UserInputError(
                f"unknown demuxing_variant {self.demuxing_variant!r}; use one of {', '.join(DEMUXING_VARIANTS)}"
            )
        if self.embedding_style not in EMBEDDING_STYLES:
            raise UserInputError(
                f"unknown embedding_style {self.embedding_style!r}; use one of {', '.join(EMBEDDING_STYLES)}"
            )
        if self.family not in FAMILIES:
            raise UserInputError(f"unknown family {self.family!r}; use one of {', '.join(FAMILIES)}")
        muxplm = self.family.startswith("muxplm")
        if self.muxing_variant == "gaussian_attention_v2" and not (muxplm and self.demuxing_variant == "index_pos"):
            raise UserInputError(
                "muxing_variant 'gaussian_attention_v2' runs only with MUX-PLMs' index_pos demux "
                "(their code fails on it with index demux)"
            )
        if (self.demuxing_variant == "index_pos") != (muxplm and self.demuxing_variant != "index"):
            raise UserInputError(
                "demuxing_variant 'index_pos' exists only for MUX-PLMs (family 'muxplm'), which use index or index_pos"
            )
        if self.family.startswith("muxplm") and self.num_hidden_demux_layers < 2:
            raise UserInputError(f"num_hidden_demux_layers must be >= 2, got {self.num_hidden_demux_layers}")
        if self.task not in TASKS:
            raise UserInputError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.num_instances < 1:
            raise UserInputError(f"num_instances must be >= 1, got {self.num_instances}")
        if self.hidden_size % self.num_attention_heads:
            raise UserInputError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.mux_slot_ids is not None and len(self.mux_slot_ids) != self.num_instances:
            raise UserInputError(
                f"mux_slot_ids has {len(self.mux_slot_ids)} ids but num_instances is {self.num_instances}"
            )
        if self.demuxing_variant == "index":
            ids = [self.mux_prefix_filler_id, self.mux_cls_id, *self.slot_ids]
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise UserInputError(
                    f"index-demux special token ids {bad} are outside the vocabulary (size {self.vocab_size}); "
                    "set mux_prefix_filler_id, mux_cls_id and mux_slot_ids to ids inside it"
                )
        offset = self.pad_token_id + 1 if self.embedding_style == "roberta" else 0
        needed = self.seq_len + self.prefix_len + offset
        if needed > self.max_position_embeddings:
            longest = self.max_position_embeddings - (needed - self.seq_len)
            raise UserInputError(
                f"seq_len {self.seq_len} needs {needed} position embeddings but the model has "
                f"{self.max_position_embeddings}; use --seq-len {longest} or less"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what checkpoints and manifests store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MuxConfig:
        """Build from a dict, keeping unknown keys under `extra` instead of failing."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)
