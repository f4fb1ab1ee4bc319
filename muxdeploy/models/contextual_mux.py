"""MUX-PLMs' contextual multiplexer (`gaussian_attention_v2`): two transformer layers around the Hadamard product.

For embedded instances x [B, N, T, D] and their token mask m [B, N, T]:
1. a1 = layer_1(x_i, mask m_i) + x_i, inside each instance;
2. z = a1 * instance_embedding[i];
3. a2 = layer_2 across the N instances at each position t (mask m[:, :, t] in MUX-BERT's sequence classifier;
   its token classifier calls this layer without a mask, and parity means doing the same);
4. mixture = mean over i of (a2 + z).
Masks are additive with float32's minimum, as transformers' extended attention masks are, so a position where
every key is masked attends uniformly instead of producing NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.models.config import MuxConfig
from muxdeploy.models.layers import make_encoder


def masked_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One post-norm BERT layer on x [R, S, D] with key mask keep [R, S] (True = attend), eval semantics."""
    r, s, d = x.shape
    heads = layer.self_attn.num_heads
    qkv = F.linear(x, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
    q, k, v = (t.reshape(r, s, heads, d // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    scores = scores + (1.0 - keep.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
    attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(r, s, d)
    h = layer.norm1(x + layer.self_attn.out_proj(attn))
    return layer.norm2(h + layer.linear2(F.gelu(layer.linear1(h))))


class ContextualMultiplexer(nn.Module):
    """[B, N, T, D] embedded instances + mask [B, N, T] -> mixture [B, T, D]."""

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        n, d = config.num_instances, config.embedding_dim
        self.instance_embedding = nn.Parameter(torch.zeros(n, d), requires_grad=config.learn_muxing)
        one_layer = MuxConfig.from_dict({**config.to_dict(), "num_hidden_layers": 1})
        self.muxing_attention = make_encoder(one_layer).layers[0]
        self.muxing_attention_2 = make_encoder(one_layer).layers[0]
        self.mask_across = config.task == "sequence_classification"

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, t, d = x.shape
        flat = x.reshape(b * n, t, d)
        a1 = masked_layer(self.muxing_attention, flat, keep.reshape(b * n, t)) + flat
        z = a1.reshape(b, n, t, d) * self.instance_embedding[None, :, None, :]
        across = z.permute(0, 2, 1, 3).reshape(b * t, n, d)
        keep2 = keep.permute(0, 2, 1).reshape(b * t, n)
        if not self.mask_across:
            keep2 = torch.ones_like(keep2)
        a2 = masked_layer(self.muxing_attention_2, across, keep2).reshape(b, t, n, d).permute(0, 2, 1, 3)
        return (a2 + z).mean(dim=1)
