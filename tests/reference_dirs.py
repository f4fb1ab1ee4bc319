"""Reference-format DataMUX checkpoints for tests: config.json + weights under the reference's parameter names.

A directory looks like what the public DataMUX code writes with `save_pretrained` (RoBERTa backbone,
`RobertaSequenceClassificationMuxed` / `RobertaTokenClassificationMuxed`), filled with random weights
whose LayerNorm weights and biases are far from 1 and 0, so a mixed-up parameter changes the outputs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REF_VOCAB = 50265  # the reference's prefix ids (50000, 49923, vocab - (i + 2)) need RoBERTa's vocabulary
REF_PAD = 1


def reference_config(
    muxing: str = "gaussian_hadamard",
    demuxing: str = "index",
    token: bool = False,
    num_instances: int = 3,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 48,
    num_labels: int = 3,
    max_positions: int = 514,
) -> dict[str, Any]:
    """A config.json dict as the reference writes it (RoBERTa fields + the multiplexing fields)."""
    arch = "RobertaTokenClassificationMuxed" if token else "RobertaSequenceClassificationMuxed"
    id2label = {str(i): f"LABEL_{chr(65 + i)}" for i in range(num_labels)}
    return {
        "_name_or_path": "roberta-base",
        "architectures": [arch],
        "attention_probs_dropout_prob": 0.1,
        "binary_hadamard_epsilon": 0.0,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "demuxing_variant": demuxing,
        "eos_token_id": 2,
        "gaussian_hadamard_norm": 1.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "id2label": id2label,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "label2id": {v: int(k) for k, v in id2label.items()},
        "layer_norm_eps": 1e-05,
        "learn_muxing": False,
        "max_position_embeddings": max_positions,
        "model_type": "roberta",
        "muxing_variant": muxing,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_instances": num_instances,
        "pad_token_id": REF_PAD,
        "position_embedding_type": "absolute",
        "retrieval_loss_coeff": 0.1,
        "retrieval_loss_vocab_scale": 1,
        "retrieval_percentage": 1.0,
        "task_loss_coeff": 0.9,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": REF_VOCAB,
    }


class _Filler:
    """Draws random tensors from one generator: weights, biases, and LayerNorm pairs away from (1, 0)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * std + mean

    def linear(self, sd: dict[str, torch.Tensor], name: str, out_dim: int, in_dim: int) -> None:
        sd[f"{name}.weight"] = self.normal(out_dim, in_dim, std=1.0 / math.sqrt(in_dim))
        sd[f"{name}.bias"] = self.normal(out_dim, std=0.1)

    def layer_norm(self, sd: dict[str, torch.Tensor], name: str, dim: int) -> None:
        sd[f"{name}.weight"] = self.normal(dim, std=0.3, mean=1.0)
        sd[f"{name}.bias"] = self.normal(dim, std=0.3)


def instance_embedding(cfg: dict[str, Any], fill: _Filler) -> torch.Tensor:
    """A plausible instance_embedding for the config's muxing variant ([N, D] or [N, D, D])."""
    n, d, variant = cfg["num_instances"], cfg["hidden_size"], cfg["muxing_variant"]
    if variant == "gaussian_hadamard":
        g = fill.normal(n, d)
        return g / g.norm(dim=1, keepdim=True) * cfg["gaussian_hadamard_norm"]
    if variant == "binary_hadamard":
        codes = torch.zeros(n, d)
        chunk = d // n
        for i in range(n):
            codes[i, i * chunk : (d if i == n - 1 else (i + 1) * chunk)] = 1.0
        return codes
    mats = []
    for i in range(n):
        q, _ = torch.linalg.qr(fill.normal(d, d))
        if variant == "random_ortho_low_rank":
            rank = d // n
            q = q[:, i * rank : (i + 1) * rank] @ fill.normal(rank, d, std=1.0 / math.sqrt(rank))
        mats.append(q)
    return torch.stack(mats)


def _mlp_demux_module(sd: dict[str, torch.Tensor], prefix: str, cfg: dict[str, Any], fill: _Filler) -> None:
    d = cfg["hidden_size"]
    for i in range(cfg["num_instances"]):
        fill.linear(sd, f"{prefix}.demux_module.dense_{i}", d, d)
        fill.layer_norm(sd, f"{prefix}.demux_module.layer_norm_{i}", d)


def _tied_decoder(sd: dict[str, torch.Tensor], prefix: str, out_dim: int, d: int, fill: _Filler) -> None:
    """decoder.weight/decoder.bias plus the reference's `bias` parameter tied to decoder.bias."""
    fill.linear(sd, f"{prefix}.decoder", out_dim, d)
    sd[f"{prefix}.bias"] = sd[f"{prefix}.decoder.bias"].clone()


def reference_state_dict(cfg: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the reference's names for this config: backbone, demultiplexer, retrieval head."""
    fill = _Filler(seed)
    d, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    labels = len(cfg["id2label"])
    token = "RobertaTokenClassificationMuxed" in cfg["architectures"]
    sd: dict[str, torch.Tensor] = {}
    emb = "roberta.embeddings"
    sd[f"{emb}.word_embeddings.weight"] = fill.normal(vocab, d, std=0.5)
    sd[f"{emb}.position_embeddings.weight"] = fill.normal(cfg["max_position_embeddings"], d, std=0.5)
    sd[f"{emb}.token_type_embeddings.weight"] = fill.normal(cfg["type_vocab_size"], d, std=0.5)
    fill.layer_norm(sd, f"{emb}.LayerNorm", d)
    sd[f"{emb}.position_ids"] = torch.arange(cfg["max_position_embeddings"]).unsqueeze(0)
    for k in range(cfg["num_hidden_layers"]):
        p = f"roberta.encoder.layer.{k}"
        for part in ("query", "key", "value"):
            fill.linear(sd, f"{p}.attention.self.{part}", d, d)
        fill.linear(sd, f"{p}.attention.output.dense", d, d)
        fill.layer_norm(sd, f"{p}.attention.output.LayerNorm", d)
        fill.linear(sd, f"{p}.intermediate.dense", inter, d)
        fill.linear(sd, f"{p}.output.dense", d, inter)
        fill.layer_norm(sd, f"{p}.output.LayerNorm", d)
    sd["instance_embedding"] = instance_embedding(cfg, fill)

    dm = "demultiplexer"
    if cfg["demuxing_variant"] == "index":
        fill.linear(sd, f"{dm}.dense", d, 2 * d)
        fill.layer_norm(sd, f"{dm}.layer_norm", d)
        if token:
            _tied_decoder(sd, dm, labels, d, fill)
        else:
            fill.linear(sd, f"{dm}.dense_before_out_proj", d, d)
            fill.linear(sd, f"{dm}.out_proj", labels, d)
        fill.linear(sd, "retrieval_head.dense", d, 2 * d)
        fill.layer_norm(sd, "retrieval_head.layer_norm", d)
    else:
        _mlp_demux_module(sd, dm, cfg, fill)
        fill.linear(sd, f"{dm}.dense_before_out_proj", d, d)
        fill.layer_norm(sd, f"{dm}.layernorm_presoftmax", d)
        fill.linear(sd, f"{dm}.out_proj", labels, d)
        _mlp_demux_module(sd, "retrieval_head", cfg, fill)
        fill.linear(sd, "retrieval_head.dense_pre_vocab", d, d)
        fill.layer_norm(sd, "retrieval_head.layer_norm_pre_vocab", d)
    _tied_decoder(sd, "retrieval_head", vocab, d, fill)
    return sd


def write_reference_dir(
    path: Path,
    cfg: dict[str, Any],
    state: dict[str, torch.Tensor],
    formats: tuple[str, ...] = ("bin", "safetensors"),
) -> Path:
    """Write config.json and the weights (pytorch_model.bin: torch.save of a plain dict; model.safetensors)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if "bin" in formats:
        torch.save(dict(state), path / "pytorch_model.bin")
    if "safetensors" in formats:
        tensors = {k: v.contiguous() for k, v in state.items()}
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def make_reference_dir(
    path: Path, seed: int = 0, **config: Any
) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """Config + random weights + directory in one call; returns (dir, config dict, state dict)."""
    cfg = reference_config(**config)
    state = reference_state_dict(cfg, seed)
    return write_reference_dir(path, cfg, state), cfg, state


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models are several times faster on a shared 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
