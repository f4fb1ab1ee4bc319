"""The DataMUX transformer rewritten for graph compilers: the same function, in the form their fusers recognise.

`DataMuxTransformer` keeps the reference's parameter layout (torch's `nn.TransformerEncoderLayer` with one packed
in_proj; the embedding layer run on every instance as one [B, N, T, D] tensor). Exported as it is, neither
onnxruntime's transformer optimizer nor TensorRT fuses its attention, and the input stage moves [B, N, T, D]
several times. `ExportForm(model)` computes the same outputs from the same weights, shaped for the fusers:

- attention as separate q/k/v projections and softmax((q * scale) k^T) v: TensorRT's MHA fusion wants the
  scale on Q before the first MatMul (onnxruntime's fuser wants it after the MatMul;
  `muxdeploy.exporters.ort_optimize` moves it there for the onnxruntime-only artifact);
- the Hadamard mux input stage per slot: instance i's first embedding pass is Gather(word) + Gather(position)
  -> LayerNorm whose weight and bias are the LayerNorm's times instance i's mux vector / N, and the mixture is
  the sum of the N slots' [B, T, D] results. LayerNorm(x) * e / N is a LayerNorm with weight gamma * e / N and
  bias beta * e / N, so this is exact algebra; the [B, N, T, D] intermediate is never formed, and each slot is
  the subgraph onnxruntime's EmbedLayerNormalization kernel computes in one pass;
- index-demux heads without concat: dense(concat(h[i], h[t])) is left(h[i]) + right(h[t]) broadcast over slots
  and tokens (half the head's GEMM work, no [B, N, T, 2D] tensor, no Shape op);
- the token-type embedding (DataMUX uses type 0 only) folded into the word table for the first pass, and the
  second pass's position + type rows (fixed positions) folded into one constant.

Orthogonal-matrix mux variants, MUX-PLMs' contextual multiplexer and ELECTRA's projected embeddings keep the
reference input stage; their encoder and heads still take the fused form.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from muxdeploy.models.heads import IndexSequenceHead, IndexTokenHead

if TYPE_CHECKING:  # the model builds its export form (DataMuxTransformer.for_export), so no import back at run time
    from muxdeploy.models.transformer import DataMuxTransformer

HADAMARD_VARIANTS = ("gaussian_hadamard", "binary_hadamard")


class BertStyleLayer(nn.Module):
    """One post-norm GELU transformer layer with separate q/k/v projections (BERT's layout), from a torch layer."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        attn = layer.self_attn
        d = attn.embed_dim
        self.num_heads = attn.num_heads
        self.head_dim = d // attn.num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        like = {"dtype": attn.in_proj_weight.dtype, "device": attn.in_proj_weight.device}
        self.query, self.key, self.value = (nn.Linear(d, d, **like) for _ in range(3))
        with torch.no_grad():
            for i, proj in enumerate((self.query, self.key, self.value)):
                proj.weight.copy_(attn.in_proj_weight[i * d : (i + 1) * d])
                proj.bias.copy_(attn.in_proj_bias[i * d : (i + 1) * d])
        self.out_proj = attn.out_proj
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.linear1, self.linear2 = layer.linear1, layer.linear2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, self.head_dim)
        q = self.query(x).unflatten(-1, heads).transpose(1, 2) * self.scale  # [B, H, T, Dh]
        k = self.key(x).unflatten(-1, heads).permute(0, 2, 3, 1)  # [B, H, Dh, T]
        v = self.value(x).unflatten(-1, heads).transpose(1, 2)  # [B, H, T, Dh]
        context = torch.matmul(torch.softmax(torch.matmul(q, k), dim=-1), v)
        h = self.norm1(x + self.out_proj(context.transpose(1, 2).flatten(2)))
        return self.norm2(h + self.linear2(F.gelu(self.linear1(h))))


class BertStyleEncoder(nn.Module):
    """A stack of `BertStyleLayer`s from an `nn.TransformerEncoder` (named `encoder`, as in the model, so the
    exporter's name scopes still mark the backbone for INT8's mux/demux exclusion)."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BertStyleLayer(layer) for layer in encoder.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SlotInputStage(nn.Module):
    """Prefixed ids [B, N, T] -> mixture [B, T, D] for Hadamard mux: per-slot embedding LayerNorm, summed."""

    def __init__(self, model: DataMuxTransformer) -> None:
        super().__init__()
        emb = model.embeddings
        n = model.config.num_instances
        self.num_instances = n
        self.embeddings = emb  # its position rules (first_pass_positions, second_pass_start)
        self.eps = emb.LayerNorm.eps
        mux = model.multiplexer.instance_embedding.detach()  # [N, D]
        type0 = emb.token_type_embeddings.weight[0].detach()
        gamma, beta = emb.LayerNorm.weight.detach(), emb.LayerNorm.bias.detach()
        self.register_buffer("word", emb.word_embeddings.weight.detach() + type0)
        self.register_buffer("position", emb.position_embeddings.weight.detach().clone())
        self.register_buffer("type0", type0.clone())
        self.register_buffer("slot_gamma", gamma[None, :] * mux / n)  # [N, D]
        self.register_buffer("slot_beta", beta[None, :] * mux / n)
        self.norm = emb.LayerNorm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.embeddings.first_pass_positions(ids)  # [B, N, T], or [1, 1, T] for BERT-style positions
        width = (self.word.shape[1],)
        mixed = None
        for i in range(self.num_instances):
            v = F.embedding(ids[:, i], self.word) + F.embedding(pos[:, i % pos.shape[1]], self.position)
            slot = F.layer_norm(v, width, self.slot_gamma[i], self.slot_beta[i], self.eps)
            mixed = slot if mixed is None else mixed + slot
        start = self.embeddings.second_pass_start
        length = ids.shape[-1]
        second = self.position[start : start + length] + self.type0  # [T, D]: positions are fixed in the 2nd pass
        return self.norm(mixed + second)


def _split_dense(dense: nn.Linear) -> tuple[nn.Linear, nn.Linear]:
    """dense(concat(a, b)) == left(a) + right(b): the [2D -> D] layer as two [D -> D] layers (bias on the left)."""
    d = dense.in_features // 2
    like = {"dtype": dense.weight.dtype, "device": dense.weight.device}
    left, right = nn.Linear(d, dense.out_features, **like), nn.Linear(d, dense.out_features, bias=False, **like)
    with torch.no_grad():
        left.weight.copy_(dense.weight[:, :d])
        left.bias.copy_(dense.bias)
        right.weight.copy_(dense.weight[:, d:])
    return left, right


class SplitIndexSequenceHead(nn.Module):
    """IndexSequenceHead without concat/expand: dense(concat(h[i], h[N])) = left(h[i]) + right(h[N]), broadcast
    over the N slots (the CLS half is computed once per group, and no Shape op enters the graph)."""

    def __init__(self, head: IndexSequenceHead) -> None:
        super().__init__()
        self.num_instances = head.num_instances
        self.left, self.right = _split_dense(head.dense)
        self.layer_norm, self.dense_before_out_proj, self.out_proj = (
            head.layer_norm,
            head.dense_before_out_proj,
            head.out_proj,
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = self.num_instances
        x = self.left(h[:, :n, :]) + self.right(h[:, n : n + 1, :])
        x = self.layer_norm(F.gelu(x))
        return self.out_proj(F.gelu(self.dense_before_out_proj(x)))


class SplitIndexTokenHead(nn.Module):
    """IndexTokenHead without concat/expand: left(h[slot i]) [B, N, 1, D] + right(h[t]) [B, 1, T', D]."""

    def __init__(self, head: IndexTokenHead) -> None:
        super().__init__()
        self.num_instances = head.num_instances
        self.left, self.right = _split_dense(head.dense)
        self.layer_norm, self.decoder = head.layer_norm, head.decoder

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = self.num_instances
        x = self.left(h[:, :n, :]).unsqueeze(2) + self.right(h[:, n + 1 :, :]).unsqueeze(1)
        return self.decoder(self.layer_norm(F.gelu(x)))


def export_head(head: nn.Module) -> nn.Module:
    """The head in its export form where one exists (index demux of DataMUX), else the head itself."""
    if type(head) is IndexSequenceHead:
        return SplitIndexSequenceHead(head)
    if type(head) is IndexTokenHead:
        return SplitIndexTokenHead(head)
    return head


class ExportForm(nn.Module):
    """input_ids [B, N, L] int32 -> the model's outputs, computed in the fuser-friendly form (module docstring)."""

    def __init__(self, model: DataMuxTransformer) -> None:
        super().__init__()
        cfg = model.config
        self.model = model
        self.slot_stage = (
            SlotInputStage(model)
            if cfg.muxing_variant in HADAMARD_VARIANTS and not hasattr(model, "embeddings_project")
            else None
        )
        self.encoder = BertStyleEncoder(model.encoder)
        self.head = export_head(model.head)
        self.register_buffer("prefix", model.prefix_ids.to(torch.int32), persistent=False)  # [N, P]

    def prefixed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, N, L] -> [B, N, T]: the reference's prefixing (DataMuxTransformer.add_prefix), per group."""
        cfg = self.model.config
        # broadcast, not expand(B, ...): no Shape op in the graph (onnxruntime runs shape arithmetic on the CPU,
        # and a graph with CPU nodes cannot be captured as one CUDA graph)
        prefix = self.prefix + input_ids[:, :, :1] * 0
        if cfg.demuxing_variant == "index":
            return torch.cat([prefix, input_ids], dim=2)
        if cfg.family == "muxplm_electra":
            return input_ids
        return torch.cat([prefix, input_ids[..., 1:]], dim=2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.slot_stage is not None:
            hidden = self.slot_stage(self.prefixed(input_ids.to(torch.int32)))
        else:
            hidden = self.model.input_stage(input_ids)
        return self.head(self.encoder(hidden))
