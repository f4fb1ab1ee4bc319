"""MUX-PLMs import: random-weight MUX-BERT directories in their save_pretrained format, checked against a
test-local functional forward written from their code's semantics, then exported and run on onnxruntime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muxdeploy.checkpoint import load_checkpoint
from muxdeploy.core.errors import UserInputError
from muxdeploy.exporters.onnx import export_bundle

N, L, D, H, FF, V, C, K = 2, 8, 16, 2, 32, 800, 3, 3
E = 8  # ELECTRA's embedding_size


def _ref_config(demux: str, mux: str, task: str, bb: str = "bert") -> dict:
    arch = "MuxedBertForTokenClassification" if task == "tok" else "MuxedBertForSequenceClassification"
    extra = {"embedding_size": E} if bb == "electra" else {}
    return extra | {
        "model_type": bb, "architectures": [arch], "vocab_size": V, "hidden_size": D, "num_hidden_layers": 2,
        "num_attention_heads": H, "intermediate_size": FF, "max_position_embeddings": 40, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_act": "gelu", "num_instances": N,
        "muxing_variant": mux, "demuxing_variant": demux, "num_hidden_demux_layers": K, "num_labels": C,
        "gaussian_hadamard_norm": 1.0, "retrieval_loss_coeff": 0.1, "task_loss_coeff": 0.9,
    }  # fmt: skip


def _ref_state(demux: str, mux: str, seed: int, bb: str = "bert", task: str = "seq") -> dict[str, torch.Tensor]:
    de = E if bb == "electra" else D
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(shape, generator=g) * scale

    def ln(prefix: str, sd: dict, d: int = D) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = 1 + r(d, scale=0.1), r(d, scale=0.1)

    def lin(prefix: str, sd: dict, i: int, o: int) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = r(o, i), r(o, scale=0.1)

    sd: dict[str, torch.Tensor] = {}
    e = f"{bb}.embeddings"
    sd[f"{e}.word_embeddings.weight"], sd[f"{e}.position_embeddings.weight"] = r(V, de), r(40, de)
    sd[f"{e}.token_type_embeddings.weight"] = r(2, de)
    ln(f"{e}.LayerNorm", sd, de)
    if bb == "electra":
        lin("electra.embeddings_project", sd, E, D)
    layers = [f"{bb}.encoder.layer.{k}" for k in range(2)]
    if mux == "gaussian_attention_v2":
        layers += ["muxing_attention", "muxing_attention_2"]
    for p in layers:
        for m in ("query", "key", "value"):
            lin(f"{p}.attention.self.{m}", sd, D, D)
        lin(f"{p}.attention.output.dense", sd, D, D)
        ln(f"{p}.attention.output.LayerNorm", sd)
        lin(f"{p}.intermediate.dense", sd, D, FF)
        lin(f"{p}.output.dense", sd, FF, D)
        ln(f"{p}.output.LayerNorm", sd)
    sd["instance_embedding"] = torch.linalg.qr(r(N, D, D))[0] if mux == "random_ortho" else r(N, de, scale=1.0)
    if demux == "index":
        lin("demultiplexer.dense", sd, 2 * D, D)
        ln("demultiplexer.layer_norm", sd)
    else:
        sd["demux_module.demux_instance_embedding"] = r(N, D, scale=1.0)
        lin("demux_module.dense_1", sd, 2 * D, D)
        ln("demux_module.layer_norm_1", sd)
        for k in range(2, K + 1):
            lin(f"demux_module.dense_{k}", sd, D, D)
            ln(f"demux_module.layer_norm_{k}", sd)
        for name in [k for k in sd if k.startswith("demux_module.")]:  # the shared module appears twice in .bin
            sd[f"demultiplexer.{name}"] = sd[name]
        lin("demultiplexer.pre_decoder", sd, D, D)
        ln("demultiplexer.pre_decoder_layer_norm", sd)
    if bb == "electra" and task == "seq":
        lin("classifier.dense", sd, D, D)
        lin("classifier.out_proj", sd, D, C)
    else:
        lin("classifier", sd, D, C)
    lin("retrieval_head.dense", sd, 2 * D, D)  # training-only parts the importer must ignore
    return sd


def _functional_forward(sd: dict, demux: str, mux: str, task: str, flat_ids: torch.Tensor, bb: str) -> torch.Tensor:
    """Their forward pass on a flat [B*N, L] batch (rows k*N..k*N+N-1 form group k), written out by hand."""
    ids = flat_ids.clone()
    rows = ids.shape[0]
    if demux == "index":
        prefix = torch.full((N, N), 680)
        prefix[range(N), range(N)] = 680 - (torch.arange(N) + 2)
        prefix = torch.cat([prefix, torch.full((N, 1), 101)], dim=1).repeat(rows // N, 1)
        ids = torch.cat([prefix, ids], dim=1)
    elif bb == "bert":  # MUX-ELECTRA keeps the first token as given
        ids[:, 0] = 101
    t = ids.shape[1]
    de = E if bb == "electra" else D

    def emb(x: torch.Tensor) -> torch.Tensor:
        e = f"{bb}.embeddings"
        x = x + sd[f"{e}.position_embeddings.weight"][:t] + sd[f"{e}.token_type_embeddings.weight"][0]
        return F.layer_norm(x, (de,), sd[f"{e}.LayerNorm.weight"], sd[f"{e}.LayerNorm.bias"], 1e-12)

    def lin(p: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])

    def ln(p: str, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (D,), sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-12)

    x = emb(sd[f"{bb}.embeddings.word_embeddings.weight"][ids]).view(rows // N, N, t, de)
    inst = sd["instance_embedding"]

    def layer(p: str, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        s = h.shape[1]
        q, kk, v = (
            lin(f"{p}.attention.self.{m}", h).view(-1, s, H, D // H).transpose(1, 2) for m in ("query", "key", "value")
        )
        scores = q @ kk.transpose(-1, -2) / math.sqrt(D // H)
        if keep is not None:  # transformers' extended attention mask
            scores = scores + (1.0 - keep.float())[:, None, None, :] * torch.finfo(torch.float32).min
        a = torch.softmax(scores, -1) @ v
        h = ln(
            f"{p}.attention.output.LayerNorm",
            lin(f"{p}.attention.output.dense", a.transpose(1, 2).reshape(-1, s, D)) + h,
        )
        return ln(f"{p}.output.LayerNorm", lin(f"{p}.output.dense", F.gelu(lin(f"{p}.intermediate.dense", h))) + h)

    if mux == "gaussian_attention_v2":  # contextual mux; tokenizer mask = non-pad ids as given
        keep = flat_ids != 0
        e = x.view(rows, t, de)
        a1 = layer("muxing_attention", e, keep) + e
        z = a1.view(rows // N, N, t, de) * inst[None, :, None, :]
        across = z.permute(0, 2, 1, 3).reshape(-1, N, de)
        keep2 = (
            keep.view(rows // N, N, t).permute(0, 2, 1).reshape(-1, N) if task == "seq" else None
        )  # sic: tok no mask
        a2 = layer("muxing_attention_2", across, keep2).view(rows // N, t, N, de).permute(0, 2, 1, 3)
        x = (a2 + z).mean(1)
    elif mux == "random_ortho":
        x = torch.matmul(inst, x.permute(0, 1, 3, 2)).permute(0, 1, 3, 2).sum(1) / math.sqrt(N)
    else:
        x = (x * inst[:, None, :]).mean(1)
    h = emb(x)
    if bb == "electra":
        h = lin("electra.embeddings_project", h)
    for k in range(2):
        h = layer(f"{bb}.encoder.layer.{k}", h)
    b = h.shape[0]
    if demux == "index":
        feats = h
        pos = h[:, :N, :].unsqueeze(2).expand(b, N, t, D)
        y = ln(
            "demultiplexer.layer_norm",
            F.gelu(lin("demultiplexer.dense", torch.cat([pos, feats.unsqueeze(1).expand(b, N, t, D)], 3))),
        )
        y = y.reshape(b * N, t, D)
        y = y[:, N : N + 1] if task == "seq" else y
    else:
        feats = h[:, 0:1] if task == "seq" else h
        tt = feats.shape[1]
        keys = sd["demux_module.demux_instance_embedding"][None, :, None, :].expand(b, N, tt, D)
        y = torch.cat([keys, feats.unsqueeze(1).expand(b, N, tt, D)], 3).reshape(b * N, tt, 2 * D)
        for k in range(1, K):  # dropout_k (identity in eval) where layer_norm_k was meant: no LayerNorm here
            y_in, y = y, F.gelu(lin(f"demux_module.dense_{k}", y))
            y = y + y_in if k > 1 else y
        y = ln("demultiplexer.pre_decoder_layer_norm", F.gelu(lin("demultiplexer.pre_decoder", y))) + y
    if bb == "electra" and task == "seq":  # transformers' ElectraClassificationHead on the demuxed CLS
        logits = lin("classifier.out_proj", F.gelu(lin("classifier.dense", y)))
    else:
        logits = lin("classifier", y)
    if task == "seq":
        return logits.squeeze(1)
    return logits[:, N + 1 :] if demux == "index" else logits  # we drop the index prefix from user output


def _write_dir(path: Path, demux: str, mux: str, task: str, seed: int, bb: str = "bert") -> dict:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(_ref_config(demux, mux, task, bb)))
    sd = _ref_state(demux, mux, seed, bb, task)
    torch.save(sd, path / "pytorch_model.bin")
    return sd


@pytest.mark.parametrize(
    ("bb", "demux", "mux", "task"),
    [
        ("bert", "index", "gaussian_hadamard", "seq"),
        ("bert", "index_pos", "random_ortho", "seq"),
        ("bert", "index", "random_ortho", "tok"),
        ("bert", "index_pos", "gaussian_hadamard", "tok"),
        ("bert", "index_pos", "gaussian_attention_v2", "seq"),
        ("bert", "index_pos", "gaussian_attention_v2", "tok"),
        ("electra", "index", "binary_hadamard", "seq"),
        ("electra", "index_pos", "gaussian_hadamard", "tok"),
    ],
)
def test_muxplm_matches_functional_forward_and_exports(
    tmp_path: Path, bb: str, demux: str, mux: str, task: str
) -> None:
    sd = _write_dir(tmp_path / "ref", demux, mux, task, seed=7, bb=bb)
    ckpt = load_checkpoint(tmp_path / "ref", seq_len=L)
    assert ckpt.meta["format"] == "muxplm"
    assert ckpt.config.task == ("token_classification" if task == "tok" else "sequence_classification")
    ids = torch.randint(5, V, (3 * N, L), generator=torch.Generator().manual_seed(0))
    ids[1, 5:] = 0
    ids[2, :] = 0  # an all-pad (filler) instance
    before = ids.clone()
    with torch.no_grad():
        ours = ckpt.model(ids.view(3, N, L)).reshape(3 * N, *([] if task == "seq" else [L]), C)
        ref = _functional_forward(sd, demux, mux, task, ids, bb)
    assert torch.equal(ids, before)  # their index_pos path writes CLS into the caller's ids; ours must not
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max()) < 1e-5
    res = export_bundle(ckpt.export_spec(), N, tmp_path / "bundle", max_batch=4)
    assert res.max_abs_diff <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.view(3, N, L).numpy().astype(np.int32)})[0]
    np.testing.assert_allclose(got.reshape(ref.shape), ref.numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seq", "tok"])
def test_muxplm_deploys_end_to_end(tmp_path: Path, task: str) -> None:
    """export -> build-engine INT8 (onnxruntime) -> runtime -> validate, from the reference-format directory."""
    from pipeline_helpers import deploy_and_check

    _write_dir(tmp_path / "ref", "index_pos", "gaussian_hadamard", task, seed=3)
    seq_len = ("--seq-len", str(L))
    deploy_and_check(tmp_path / "ref", N, tmp_path, vocab=V, labels=C, token_task=task == "tok", export_args=seq_len)


def test_muxplm_refusals(tmp_path: Path) -> None:
    _write_dir(tmp_path / "a", "index", "random_ortho_low_rank_v9", "seq", seed=1)
    with pytest.raises(UserInputError, match="random_ortho_low_rank_v9"):
        load_checkpoint(tmp_path / "a")
    cfg = _ref_config("mlp", "gaussian_hadamard", "seq")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserInputError, match="index or index_pos"):
        load_checkpoint(tmp_path / "b")
    sd = _write_dir(tmp_path / "c", "index_pos", "gaussian_hadamard", "seq", seed=1)
    del sd["instance_embedding"]
    torch.save(sd, tmp_path / "c" / "pytorch_model.bin")
    with pytest.raises(UserInputError, match="instance_embedding"):
        load_checkpoint(tmp_path / "c", seq_len=L)
