"""MUX-PLMs' demultiplexing heads (princeton-nlp/datamux-pretraining), parameter names as in their state dicts.

Both return [B, N, C] (sequence classification) or [B, N, T', C] (token classification, prefix dropped).
MUX-ELECTRA differs in its sequence classifier (dense -> GELU -> out_proj) and in index_pos keeping the
first token as given (MUX-BERT overwrites it with CLS).
- index: concat(h[slot i], h[t]) -> dense -> GELU -> LayerNorm, then `classifier`; sequence tasks read the
  CLS position N.
- index_pos (RSA-demux): concat(demux_instance_embedding[i], h[t]) -> for k in 1..K-1: dense_k -> GELU ->
  dropout_k (the released code applies `dropout_k` where `layer_norm_k` was meant; it is the identity at
  inference and we keep it that way) with a residual from k=2 on -> pre_decoder -> GELU -> LayerNorm
  + residual, then `classifier`; sequence tasks read position 0.
"""

from __future__ import annotations

import torch
from torch import nn

from muxdeploy.core.errors import UserInputError
from muxdeploy.models.config import MuxConfig
from muxdeploy.models.layers import gelu, index_pairs


class ElectraClassifier(nn.Module):
    """MUX-ELECTRA's sequence `classifier` (transformers' ElectraClassificationHead): dense -> GELU -> out_proj."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(gelu(self.dense(self.dropout(x)))))


def make_classifier(config: MuxConfig) -> nn.Module:
    """`classifier`: a Linear, except MUX-ELECTRA's sequence head."""
    if config.family == "muxplm_electra" and config.task == "sequence_classification":
        return ElectraClassifier(config)
    return nn.Linear(config.hidden_size, config.output_dim)


class IndexDemultiplexer(nn.Module):
    """`demultiplexer` of index demux: dense(2D -> D) -> GELU -> LayerNorm."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(gelu(self.dense(pairs)))


class MuxPLMIndexHead(nn.Module):
    """Index demux with MUX-PLMs' classifier."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.num_instances = config.num_instances
        self.sequence = config.task == "sequence_classification"
        self.demultiplexer = IndexDemultiplexer(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = make_classifier(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = self.num_instances
        if self.sequence:
            slots = h[:, :n, :]
            pairs = torch.cat([slots, h[:, n : n + 1, :].expand_as(slots)], dim=2)
        else:
            pairs = index_pairs(h, n, keep_from=n + 1)
        return self.classifier(self.dropout(self.demultiplexer(pairs)))


class IndexPosDemuxModule(nn.Module):
    """`demux_module`: the per-slot keys and the hidden demux layers (dense_k, layer_norm_k, dropout_k)."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.num_layers = config.num_hidden_demux_layers
        self.demux_instance_embedding = nn.Parameter(torch.zeros(config.num_instances, d))
        self.dense_1 = nn.Linear(2 * d, d)
        self.layer_norm_1 = nn.LayerNorm(d, eps=eps)
        self.dropout_1 = nn.Dropout(config.hidden_dropout_prob)
        for k in range(2, self.num_layers + 1):
            setattr(self, f"dense_{k}", nn.Linear(d, d))
            setattr(self, f"dropout_{k}", nn.Dropout(config.hidden_dropout_prob))
            setattr(self, f"layer_norm_{k}", nn.LayerNorm(d, eps=eps))


class IndexPosDemultiplexer(nn.Module):
    """`demultiplexer` of index_pos demux: its own pre_decoder layers (the demux module lives beside it)."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.pre_decoder = nn.Linear(config.hidden_size, config.hidden_size)
        self.pre_decoder_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class MuxPLMIndexPosHead(nn.Module):
    """RSA-demux with MUX-PLMs' classifier."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.num_instances = config.num_instances
        self.sequence = config.task == "sequence_classification"
        self.demux_module = IndexPosDemuxModule(config)
        self.demultiplexer = IndexPosDemultiplexer(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = make_classifier(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = h[:, 0:1, :] if self.sequence else h
        b, t, d = tokens.shape
        n = self.num_instances
        keys = self.demux_module.demux_instance_embedding[None, :, None, :].expand(b, n, t, d)
        x = torch.cat([keys, tokens.unsqueeze(1).expand(b, n, t, d)], dim=3)
        mod = self.demux_module
        for k in range(1, mod.num_layers):
            x_in = x
            x = getattr(mod, f"dropout_{k}")(gelu(getattr(mod, f"dense_{k}")(x)))  # sic: dropout, not layer_norm
            if k > 1:
                x = x + x_in
        dem = self.demultiplexer
        x = dem.pre_decoder_layer_norm(gelu(dem.pre_decoder(x))) + x
        logits = self.classifier(self.dropout(x))
        return logits[:, :, 0, :] if self.sequence else logits


def make_muxplm_head(config: MuxConfig) -> nn.Module:
    """The MUX-PLM head for this config's demux variant (index or index_pos)."""
    if config.task == "retrieval":
        raise UserInputError("MUX-PLM checkpoints export sequence or token classification heads, not retrieval")
    return MuxPLMIndexHead(config) if config.demuxing_variant == "index" else MuxPLMIndexPosHead(config)
