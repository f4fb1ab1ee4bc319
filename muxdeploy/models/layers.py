"""Building blocks of the DataMUX transformer: RoBERTa embeddings, multiplexer, encoder, and the heads' shared
GELU and index-demux pairing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.models.config import MuxConfig


class RobertaEmbeddings(nn.Module):
    """Word + position + token-type embeddings and LayerNorm, with RoBERTa's position ids."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.bert_style = config.embedding_style == "bert"  # BERT: positions 0..T-1 in both passes
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.embedding_dim, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_dim)
        self.LayerNorm = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def first_pass_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position ids of the first pass over ids [..., T] (ids' dtype): RoBERTa's, where pad tokens take the pad
        position, or 0..T-1 (BERT style, shaped [1, ..., T] to broadcast)."""
        length = input_ids.shape[-1]
        if self.bert_style:
            shape = (1,) * (input_ids.dim() - 1) + (length,)
            return torch.arange(length, dtype=input_ids.dtype, device=input_ids.device).reshape(shape)
        mask = (input_ids != self.padding_idx).to(input_ids.dtype)
        return torch.cumsum(mask, dim=-1, dtype=input_ids.dtype) * mask + self.padding_idx

    @property
    def second_pass_start(self) -> int:
        """The position id of the mixture's first token in the second pass (after padding_idx for RoBERTa)."""
        return 0 if self.bert_style else self.padding_idx + 1

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """First pass: ids [R, T] -> [R, T, D]; pad tokens take the pad position."""
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.first_pass_positions(input_ids))
        return self._finish(x)

    def embed_vectors(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Second pass over the mixture [B, T, D]: positions run from `second_pass_start`."""
        length = inputs_embeds.shape[1]
        start = self.second_pass_start
        position_ids = torch.arange(start, length + start, device=inputs_embeds.device)
        x = inputs_embeds + self.position_embeddings(position_ids).unsqueeze(0)
        return self._finish(x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        # token_type_ids are all zero in DataMUX
        x = x + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class Multiplexer(nn.Module):
    """Combine N embedded instances [B, N, T, D] into one mixture [B, T, D]."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.variant = config.muxing_variant
        n, d = config.num_instances, config.embedding_dim
        shape = (n, d, d) if self.variant.startswith("random_ortho") else (n, d)
        # Filled from the checkpoint (or by init_instance_embedding for new models); never from a seed at load.
        self.instance_embedding = nn.Parameter(torch.zeros(shape), requires_grad=config.learn_muxing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.instance_embedding.dim() == 3:
            # reference: E_i @ x^T, summed over instances, divided by sqrt(N)
            mixed = torch.einsum("ned,bntd->bnte", self.instance_embedding, x)
            return mixed.sum(dim=1) / math.sqrt(self.instance_embedding.shape[0])
        return (x * self.instance_embedding[None, :, None, :]).mean(dim=1)


def make_instance_embedding(config: MuxConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh instance embedding for a NEW model, the way the reference does for each variant."""
    n, d = config.num_instances, config.embedding_dim
    if config.muxing_variant in ("gaussian_hadamard", "gaussian_attention_v2"):
        g = torch.randn((n, d), generator=generator)
        return g / torch.norm(g, dim=1, keepdim=True) * config.gaussian_hadamard_norm
    if config.muxing_variant == "binary_hadamard":
        return _binary_encoding(n, d, config.binary_hadamard_epsilon)
    mats = []
    for _ in range(n):
        q, r = torch.linalg.qr(torch.randn((d, d), generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
        if config.muxing_variant == "random_ortho_low_rank":
            rank = max(1, d // n)
            q = q[:, :rank] @ q[:, :rank].T * math.sqrt(d / rank)
        mats.append(q.float())
    return torch.stack(mats)


def _binary_encoding(n: int, d: int, epsilon: float) -> torch.Tensor:
    """Chunked 0/1 codes, chunks widened by epsilon/2 on each inner side (reference semantics)."""
    chunk = d // n
    starts = [chunk * i for i in range(n)]
    ends = [s + chunk for s in starts]
    ends[-1] = d
    overlap = (epsilon / 2) * chunk  # fractional bounds truncate, as the reference's integer tensors do
    out = torch.zeros(n, d)
    for i in range(n):
        start = int(starts[i] - overlap) if i > 0 else starts[i]
        end = int(ends[i] + overlap) if i < n - 1 else ends[i]
        out[i, start:end] = 1
    return out


def make_encoder(config: MuxConfig) -> nn.TransformerEncoder:
    """Post-norm GELU transformer layers: the same layer as RoBERTa's, with torch's parameter names."""
    layer = nn.TransformerEncoderLayer(
        d_model=config.hidden_size,
        nhead=config.num_attention_heads,
        dim_feedforward=config.intermediate_size,
        dropout=config.hidden_dropout_prob,
        activation="gelu",
        layer_norm_eps=config.layer_norm_eps,
        batch_first=True,
        norm_first=False,
    )
    return nn.TransformerEncoder(layer, num_layers=config.num_hidden_layers, enable_nested_tensor=False)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as the reference uses."""
    return F.gelu(x)


def index_pairs(h: torch.Tensor, n: int, keep_from: int) -> torch.Tensor:
    """concat(h[slot i], h[t]) for every slot i and kept position t: [B, N, T', 2D]."""
    slots = h[:, :n, :]
    tokens = h[:, keep_from:, :]
    b, t, d = tokens.shape
    left = slots.unsqueeze(2).expand(b, n, t, d)
    right = tokens.unsqueeze(1).expand(b, n, t, d)
    return torch.cat([left, right], dim=3)
