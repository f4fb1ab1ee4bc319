"""Demultiplexing heads. Parameter names follow the reference so its state dicts map one to one.

Every head takes the encoder output h [B, T, D] (T = prefix + L) and returns [B, N, C] for sequence
tasks or [B, N, T', C] for token tasks (T' = positions kept, prefix dropped).
"""

from __future__ import annotations

import torch
from torch import nn

from muxdeploy.models.config import MuxConfig
from muxdeploy.models.heads_muxplm import make_muxplm_head
from muxdeploy.models.layers import gelu, index_pairs


class MLPDemuxModule(nn.Module):
    """One dense + LayerNorm per instance (`dense_i`, `layer_norm_i`)."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.num_instances = config.num_instances
        for i in range(config.num_instances):
            setattr(self, f"dense_{i}", nn.Linear(config.hidden_size, config.hidden_size))
            setattr(self, f"layer_norm_{i}", nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., D] -> [B, N, ..., D]: instance i's own projection of the shared features."""
        outs = []
        for i in range(self.num_instances):
            dense = getattr(self, f"dense_{i}")
            norm = getattr(self, f"layer_norm_{i}")
            outs.append(norm(gelu(dense(self.dropout(x)))))
        return torch.stack(outs, dim=1)


class IndexSequenceHead(nn.Module):
    """Index demux, sequence classification: concat(h[i], h[N]) -> dense -> GELU -> LN -> dense -> GELU -> out."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.num_instances = config.num_instances
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense_before_out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = self.num_instances
        slots = h[:, :n, :]
        cls = h[:, n : n + 1, :].expand_as(slots)
        x = self.layer_norm(gelu(self.dense(torch.cat([slots, cls], dim=2))))
        return self.out_proj(gelu(self.dense_before_out_proj(x)))


class MLPSequenceHead(nn.Module):
    """MLP demux, sequence classification: per-instance dense+LN on h[0], then shared dense -> GELU -> LN -> out."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.demux_module = MLPDemuxModule(config)
        self.dense_before_out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.layernorm_presoftmax = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.demux_module(h[:, 0, :])
        return self.out_proj(self.layernorm_presoftmax(gelu(self.dense_before_out_proj(x))))


class IndexTokenHead(nn.Module):
    """Index demux per token: concat(h[i], h[t]) -> dense -> GELU -> LN -> decoder; prefix positions dropped.

    Serves token classification (decoder to labels) and retrieval (decoder to the vocabulary).
    """

    def __init__(self, config: MuxConfig, out_dim: int) -> None:
        super().__init__()
        self.num_instances = config.num_instances
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pairs = index_pairs(h, self.num_instances, keep_from=self.num_instances + 1)
        return self.decoder(self.layer_norm(gelu(self.dense(pairs))))


class MLPTokenHead(nn.Module):
    """MLP demux per token: per-instance dense+LN at every position, then shared dense -> GELU -> LN -> out.

    `prefix` names the shared layers as the reference does for each task (token classification:
    dense_before_out_proj/layernorm_presoftmax/out_proj; retrieval: dense_pre_vocab/layer_norm_pre_vocab/decoder).
    """

    def __init__(self, config: MuxConfig, out_dim: int, retrieval: bool = False) -> None:
        super().__init__()
        self.retrieval = retrieval
        self.demux_module = MLPDemuxModule(config)
        d, eps = config.hidden_size, config.layer_norm_eps
        if retrieval:
            self.dense_pre_vocab = nn.Linear(d, d)
            self.layer_norm_pre_vocab = nn.LayerNorm(d, eps=eps)
            self.decoder = nn.Linear(d, out_dim)
        else:
            self.dense_before_out_proj = nn.Linear(d, d)
            self.layernorm_presoftmax = nn.LayerNorm(d, eps=eps)
            self.out_proj = nn.Linear(d, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.demux_module(h)
        if self.retrieval:
            return self.decoder(self.layer_norm_pre_vocab(gelu(self.dense_pre_vocab(x))))
        return self.out_proj(self.layernorm_presoftmax(gelu(self.dense_before_out_proj(x))))


def make_head(config: MuxConfig) -> nn.Module:
    """The demultiplexer for this config's demux variant and task."""
    if config.family.startswith("muxplm"):
        return make_muxplm_head(config)
    index = config.demuxing_variant == "index"
    if config.task == "sequence_classification":
        return IndexSequenceHead(config) if index else MLPSequenceHead(config)
    out_dim = config.output_dim
    if index:
        return IndexTokenHead(config, out_dim)
    return MLPTokenHead(config, out_dim, retrieval=config.task == "retrieval")
