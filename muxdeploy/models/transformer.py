"""The DataMUX transformer: N instances in, one backbone pass, N outputs out.

The reference implementation's forward pass: every instance gets the demux prefix (index demux: N+1 ids naming
its slot; MLP demux: a CLS id over its first token), is embedded on its own (RoBERTa embeddings), the multiplexer
mixes the N instances into one sequence, the mixture is embedded a second time (as `inputs_embeds`) and runs
through the encoder once, with no attention mask, and the head demultiplexes N outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from muxdeploy.models.config import MuxConfig
from muxdeploy.models.heads import make_head
from muxdeploy.models.layers import Multiplexer, RobertaEmbeddings, make_encoder, make_instance_embedding


class DataMuxTransformer(nn.Module):
    """input_ids [B, N, L] -> logits [B, N, C] (sequence) or [B, N, L, C] (token, retrieval).

    Computes the reference's flat-batch forward pass: row b*N + i of the reference is [b, i] here.
    Inputs are never modified.
    """

    def __init__(self, config: MuxConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = RobertaEmbeddings(config)
        if config.muxing_variant == "gaussian_attention_v2":
            from muxdeploy.models.contextual_mux import ContextualMultiplexer

            self.multiplexer: nn.Module = ContextualMultiplexer(config)
        else:
            self.multiplexer = Multiplexer(config)
        if config.embedding_dim != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_dim, config.hidden_size)
        self.encoder = make_encoder(config)
        self.head = make_head(config)
        self.register_buffer("prefix_ids", self._prefix_ids(config), persistent=False)

    @staticmethod
    def _prefix_ids(config: MuxConfig) -> torch.Tensor:
        n = config.num_instances
        if config.demuxing_variant != "index":
            return torch.full((n, 1), config.mux_cls_id, dtype=torch.int64)
        prefix = torch.full((n, n + 1), config.mux_prefix_filler_id, dtype=torch.int64)
        prefix[torch.arange(n), torch.arange(n)] = torch.tensor(config.slot_ids, dtype=torch.int64)
        prefix[:, n] = config.mux_cls_id
        return prefix

    def init_weights(self, seed: int = 0) -> None:
        """Initialize a NEW model (training from scratch): RoBERTa-style normal(0.02) and a drawn instance embedding."""
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    module.weight.normal_(0.0, 0.02, generator=gen)
                    if isinstance(module, nn.Linear) and module.bias is not None:
                        module.bias.zero_()
                    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                        module.weight[module.padding_idx].zero_()
        for layer in self.encoder.layers:
            with torch.no_grad():
                layer.self_attn.in_proj_weight.normal_(0.0, 0.02, generator=gen)
                layer.self_attn.in_proj_bias.zero_()
        with torch.no_grad():
            self.multiplexer.instance_embedding.copy_(make_instance_embedding(self.config, gen))

    def add_prefix(self, flat_ids: torch.Tensor) -> torch.Tensor:
        """Reference prefixing on a flat [B*N, L] batch: index demux prepends N+1 ids, MLP demux overwrites id 0."""
        rows = flat_ids.shape[0]
        n = self.config.num_instances
        prefix = self.prefix_ids.repeat(rows // n, 1)
        if self.config.demuxing_variant == "index":
            return torch.cat([prefix, flat_ids], dim=1)
        if self.config.family == "muxplm_electra":  # MUX-ELECTRA's index_pos keeps the first token as given
            return flat_ids
        return torch.cat([prefix, flat_ids[:, 1:]], dim=1)

    def input_stage(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, N, L] ids -> the mixture [B, T, D] the encoder reads: prefix, embed every instance, mux, embed again."""
        b, n, length = input_ids.shape
        ids = self.add_prefix(input_ids.reshape(b * n, length).to(torch.int64))
        embedded = self.embeddings.embed_ids(ids)
        grouped = embedded.reshape(b, n, ids.shape[1], -1)
        if self.config.muxing_variant == "gaussian_attention_v2":
            # the contextual multiplexer's attention mask: the tokenizer's mask (non-pad tokens of the input as given)
            mixed = self.multiplexer(grouped, input_ids != self.config.pad_token_id)
        else:
            mixed = self.multiplexer(grouped)
        mixed = self.embeddings.embed_vectors(mixed)
        if hasattr(self, "embeddings_project"):
            mixed = self.embeddings_project(mixed)
        return mixed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.input_stage(input_ids)))

    def for_export(self) -> nn.Module:
        """The same function in the form graph compilers fuse (separate q/k/v, per-slot input stage)."""
        from muxdeploy.models.export_form import ExportForm

        return ExportForm(self)


def build_model(config: MuxConfig) -> DataMuxTransformer:
    """A DataMUX transformer for `config` (weights uninitialized: load a state dict or call init_weights)."""
    return DataMuxTransformer(config)
