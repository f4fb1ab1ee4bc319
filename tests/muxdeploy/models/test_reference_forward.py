"""Our model, loaded from a reference-format directory, reproduces the reference forward pass.

`reference_forward` below is an independent functional implementation of DataMUX's forward pass (embeddings per
instance, multiplexing, the embeddings' positions and LayerNorm again on the mixture, the encoder without an
attention mask, the demux head), written with torch.nn.functional directly on the reference-named state dict and
the reference's flat [B*N, L] batch (rows k*N .. k*N+N-1 form group k). It shares no code with muxdeploy.models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from reference_dirs import (
    REF_PAD,
    make_reference_dir,
    reference_config,
    reference_state_dict,
    single_torch_thread,
    write_reference_dir,
)

from muxdeploy.checkpoint import load_checkpoint
from muxdeploy.core.errors import UserInputError

PREFIX_FILLER, CLS = 50000, 49923
MUXING = ("gaussian_hadamard", "binary_hadamard", "random_ortho", "random_ortho_low_rank")
TOL = 1e-5


# ---- the reference forward pass, functional --------------------------------------------------------


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _lin(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _prefixed_ids(flat_ids: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """Index demux: prepend [filler.. slot id at i .. filler, CLS]; MLP demux: overwrite token 0 with CLS."""
    n, vocab = cfg["num_instances"], cfg["vocab_size"]
    rows = flat_ids.shape[0]
    ids = flat_ids.clone()
    if cfg["demuxing_variant"] == "mlp":
        ids[:, 0] = CLS
        return ids
    prefix = torch.full((rows, n + 1), PREFIX_FILLER, dtype=ids.dtype)
    for r in range(rows):
        i = r % n  # row r is instance r mod N of group r // N
        prefix[r, i] = vocab - (i + 2)
    prefix[:, n] = CLS
    return torch.cat([prefix, ids], dim=1)


def _embed(sd: dict[str, torch.Tensor], x: torch.Tensor, positions: torch.Tensor, eps: float) -> torch.Tensor:
    e = "roberta.embeddings"
    x = x + F.embedding(positions, sd[f"{e}.position_embeddings.weight"]) + sd[f"{e}.token_type_embeddings.weight"][0]
    return _ln(x, sd, f"{e}.LayerNorm", eps)


def _bert_layer(h: torch.Tensor, sd: dict[str, torch.Tensor], k: int, heads: int, eps: float) -> torch.Tensor:
    p = f"roberta.encoder.layer.{k}"
    b, t, d = h.shape
    dh = d // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, t, heads, dh).transpose(1, 2)

    q = split(_lin(h, sd, f"{p}.attention.self.query"))
    kk = split(_lin(h, sd, f"{p}.attention.self.key"))
    v = split(_lin(h, sd, f"{p}.attention.self.value"))
    probs = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # no attention mask
    ctx = (probs @ v).transpose(1, 2).reshape(b, t, d)
    a = _ln(h + _lin(ctx, sd, f"{p}.attention.output.dense"), sd, f"{p}.attention.output.LayerNorm", eps)
    f = _lin(F.gelu(_lin(a, sd, f"{p}.intermediate.dense")), sd, f"{p}.output.dense")
    return _ln(a + f, sd, f"{p}.output.LayerNorm", eps)


def _index_pair_head(h: torch.Tensor, sd: dict[str, torch.Tensor], p: str, n: int, eps: float) -> torch.Tensor:
    """For every instance i and position t: concat(h[i], h[t]) -> dense -> GELU -> LN -> decoder. [B, N, T, C]."""
    outs = []
    for i in range(n):
        pairs = torch.cat([h[:, i : i + 1, :].expand_as(h), h], dim=-1)
        x = _ln(F.gelu(_lin(pairs, sd, f"{p}.dense")), sd, f"{p}.layer_norm", eps)
        outs.append(F.linear(x, sd[f"{p}.decoder.weight"], sd[f"{p}.bias"]))  # `bias` is tied to decoder.bias
    return torch.stack(outs, dim=1)


def _mlp_demux(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, n: int, eps: float) -> torch.Tensor:
    """Instance i's own dense -> GELU -> LayerNorm of the shared features: [B, ..., D] -> [B, N, ..., D]."""
    m = f"{p}.demux_module"
    outs = [_ln(F.gelu(_lin(x, sd, f"{m}.dense_{i}")), sd, f"{m}.layer_norm_{i}", eps) for i in range(n)]
    return torch.stack(outs, dim=1)


def reference_forward(
    sd: dict[str, torch.Tensor], cfg: dict[str, Any], flat_ids: torch.Tensor, task: str
) -> torch.Tensor:
    """The reference's outputs for a flat batch [B*N, L]: [B*N, C] (sequence) or [B*N, T, C] (token, retrieval;
    T includes the index prefix, which the caller drops)."""
    n, eps, pad = cfg["num_instances"], cfg["layer_norm_eps"], cfg["pad_token_id"]
    rows = flat_ids.shape[0]
    b = rows // n
    ids = _prefixed_ids(flat_ids, cfg)
    t = ids.shape[1]
    # first embedding pass, per instance; RoBERTa position ids: pads take padding_idx, the rest count from it
    not_pad = (ids != pad).long()
    positions = torch.cumsum(not_pad, dim=1) * not_pad + pad
    emb = _embed(sd, F.embedding(ids, sd["roberta.embeddings.word_embeddings.weight"]), positions, eps)
    emb = emb.view(b, n, t, -1)
    inst = sd["instance_embedding"]
    if inst.dim() == 2:  # Hadamard: elementwise product with instance i's vector, mean over instances
        mixed = sum(emb[:, i] * inst[i] for i in range(n)) / n
    else:  # orthogonal: out_i = E_i @ x for every token, summed, / sqrt(N)
        mixed = sum(torch.einsum("de,bte->btd", inst[i], emb[:, i]) for i in range(n)) / math.sqrt(n)
    # second pass: the mixture is inputs_embeds; positions padding_idx+1 .. padding_idx+T
    h = _embed(sd, mixed, torch.arange(pad + 1, pad + 1 + t), eps)
    for k in range(cfg["num_hidden_layers"]):
        h = _bert_layer(h, sd, k, cfg["num_attention_heads"], eps)

    dm, index = "demultiplexer", cfg["demuxing_variant"] == "index"
    if task == "sequence_classification" and index:
        cls = h[:, n : n + 1, :].expand(b, n, h.shape[-1])
        x = _ln(F.gelu(_lin(torch.cat([h[:, :n, :], cls], dim=-1), sd, f"{dm}.dense")), sd, f"{dm}.layer_norm", eps)
        out = _lin(F.gelu(_lin(x, sd, f"{dm}.dense_before_out_proj")), sd, f"{dm}.out_proj")
    elif task == "sequence_classification":
        x = _mlp_demux(h[:, 0, :], sd, dm, n, eps)
        x = _ln(F.gelu(_lin(x, sd, f"{dm}.dense_before_out_proj")), sd, f"{dm}.layernorm_presoftmax", eps)
        out = _lin(x, sd, f"{dm}.out_proj")
    elif index:
        out = _index_pair_head(h, sd, dm if task == "token_classification" else "retrieval_head", n, eps)
    elif task == "token_classification":
        x = _mlp_demux(h, sd, dm, n, eps)
        x = _ln(F.gelu(_lin(x, sd, f"{dm}.dense_before_out_proj")), sd, f"{dm}.layernorm_presoftmax", eps)
        out = _lin(x, sd, f"{dm}.out_proj")
    else:
        rh = "retrieval_head"
        x = _mlp_demux(h, sd, rh, n, eps)
        x = _ln(F.gelu(_lin(x, sd, f"{rh}.dense_pre_vocab")), sd, f"{rh}.layer_norm_pre_vocab", eps)
        out = F.linear(x, sd[f"{rh}.decoder.weight"], sd[f"{rh}.bias"])
    return out.reshape(rows, *out.shape[2:])  # [B, N, ...] -> flat rows b*N + i


# ---- inputs and fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def sample_ids(groups: int, n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """[groups, N, L] ids with padded tails of varied length, a pad inside one row, and an all-pad row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (groups, n, length), generator=gen)
    lengths = torch.randint(1, length + 1, (groups, n), generator=gen)
    ids[torch.arange(length) >= lengths[..., None]] = REF_PAD
    ids[0, 0, :] = torch.arange(length) + 3
    ids[0, 0, length // 2] = REF_PAD  # a pad in the middle: the positions after it skip one
    ids[-1, -1, :] = REF_PAD  # an empty instance
    return ids


@pytest.fixture(scope="module")
def ref_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Reference directories by (muxing, demuxing, token head?), written on first use."""
    cache: dict[tuple[str, str, bool], tuple[Path, dict[str, Any], dict[str, torch.Tensor]]] = {}
    root = tmp_path_factory.mktemp("refdirs")

    def get(muxing: str, demuxing: str, token: bool):
        key = (muxing, demuxing, token)
        if key not in cache:
            seed = len(cache) + 1
            cache[key] = make_reference_dir(
                root / f"{muxing}-{demuxing}-{'tok' if token else 'seq'}",
                seed=seed,
                muxing=muxing,
                demuxing=demuxing,
                token=token,
            )
        return cache[key]

    return get


TASKS = ("sequence_classification", "token_classification", "retrieval")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("demuxing", ["index", "mlp"])
@pytest.mark.parametrize("muxing", MUXING)
def test_loaded_model_reproduces_reference_forward(ref_dirs, muxing: str, demuxing: str, task: str) -> None:
    path, cfg, sd = ref_dirs(muxing, demuxing, token=task == "token_classification")
    ckpt = load_checkpoint(path, task=None if task != "retrieval" else "retrieval")
    assert ckpt.config.task == task  # sequence/token from `architectures`, retrieval by request
    n, length = cfg["num_instances"], 9
    ids = sample_ids(2, n, length, cfg["vocab_size"], seed=7)
    before = ids.clone()
    with torch.no_grad():
        ours = ckpt.model(ids)
        ref = reference_forward(sd, cfg, ids.reshape(2 * n, length), task)
    assert torch.equal(ids, before), "the model modified its input"
    if task != "sequence_classification" and demuxing == "index":
        ref = ref[:, n + 1 :]  # the prefix is dropped from the user-facing output
    c = len(cfg["id2label"]) if task != "retrieval" else cfg["vocab_size"]
    expect_shape = (2, n, c) if task == "sequence_classification" else (2, n, length, c)
    assert tuple(ours.shape) == expect_shape
    ref = ref.reshape(expect_shape)
    assert ref.abs().max() > 0.1  # not a degenerate all-zero comparison
    err = (ours - ref).abs().max().item()
    assert err <= TOL, f"{muxing}/{demuxing}/{task}: max abs err {err:.3g}"


def test_reference_forward_sees_what_it_should(ref_dirs) -> None:
    """The functional reference is itself sensitive to the details that decide parity."""
    _, cfg, sd = ref_dirs("gaussian_hadamard", "index", False)
    n, length = cfg["num_instances"], 9
    flat = sample_ids(2, n, length, cfg["vocab_size"], seed=3).reshape(2 * n, length)
    base = reference_forward(sd, cfg, flat, "sequence_classification")
    # swapping two instances of a group swaps their outputs only up to the instance embedding: outputs change
    swapped = flat.clone()
    swapped[[0, 1]] = flat[[1, 0]]
    out = reference_forward(sd, cfg, swapped, "sequence_classification")
    assert not torch.allclose(out[:2], base[[1, 0]], atol=1e-3)
    # the LayerNorm bias of the embeddings matters (so a dropped or renamed parameter would be caught)
    sd2 = dict(sd)
    sd2["roberta.embeddings.LayerNorm.bias"] = torch.zeros_like(sd["roberta.embeddings.LayerNorm.bias"])
    assert (reference_forward(sd2, cfg, flat, "sequence_classification") - base).abs().max() > 1e-2
    # groups are independent: group 1's outputs do not depend on group 0's instances
    other = flat.clone()
    other[:n] = torch.flip(other[:n], dims=[1])
    assert torch.allclose(reference_forward(sd, cfg, other, "sequence_classification")[n:], base[n:], atol=1e-6)


def test_mlp_demux_does_not_mutate_input_and_ignores_first_token(ref_dirs) -> None:
    """The MLP path overwrites token 0 with CLS inside the model (the reference writes into the caller's ids)."""
    path, cfg, _ = ref_dirs("binary_hadamard", "mlp", False)
    model = load_checkpoint(path).model
    n = cfg["num_instances"]
    ids = sample_ids(1, n, 8, cfg["vocab_size"], seed=5)
    before = ids.clone()
    other = ids.clone()
    other[:, :, 0] = 12345
    with torch.no_grad():
        a, b = model(ids), model(other)
    assert torch.equal(ids, before)
    assert torch.allclose(a, b, atol=0)


def test_reference_dir_without_instance_embedding_is_refused(tmp_path: Path) -> None:
    cfg = reference_config(num_instances=2, hidden=16, layers=1, heads=2, intermediate=32)
    state = reference_state_dict(cfg)
    del state["instance_embedding"]
    path = write_reference_dir(tmp_path / "ref", cfg, state, formats=("safetensors",))
    with pytest.raises(UserInputError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "instance_embedding" in msg and "\n" not in msg


@pytest.mark.parametrize("keep", ["bias", "decoder.bias"])
def test_tied_decoder_bias_under_either_name(tmp_path: Path, keep: str) -> None:
    """save_pretrained may keep only one name of the tied pair `bias` / `decoder.bias`: both load the same."""
    cfg = reference_config(token=True, num_instances=2, hidden=16, layers=1, heads=2, intermediate=32)
    sd = reference_state_dict(cfg, seed=11)
    drop = "decoder.bias" if keep == "bias" else "bias"
    state = {k: v for k, v in sd.items() if k != f"demultiplexer.{drop}"}
    path = write_reference_dir(tmp_path / "ref", cfg, state, formats=("safetensors",))
    ids = sample_ids(2, 2, 6, cfg["vocab_size"], seed=1)
    with torch.no_grad():
        ours = load_checkpoint(path).model(ids)
    ref = reference_forward(sd, cfg, ids.reshape(4, 6), "token_classification")[:, 3:].reshape(ours.shape)
    assert (ours - ref).abs().max().item() <= TOL
