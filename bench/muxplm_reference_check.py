"""Check muxdeploy's MUX-PLM import against the REAL MUX-PLMs code (princeton-nlp/datamux-pretraining).

Step 1 runs in a scratch venv holding their code's dependencies (not muxdeploy's):
    python3 -m venv /work/venv-zoo-ref && /work/venv-zoo-ref/bin/pip install torch==2.13.0 transformers==4.44.2 scipy
    git clone https://github.com/princeton-nlp/datamux-pretraining /tmp/zoo_dmp   # their repo, for its models/
    /work/venv-zoo-ref/bin/python bench/muxplm_reference_check.py make /tmp/zoo_dmp /tmp/zoo_ref/out
Step 2 runs with muxdeploy:
    PYTHONPATH=$PWD python bench/muxplm_reference_check.py compare /tmp/zoo_ref/out
Step 1 builds tiny random MUX-BERT / MUX-ELECTRA models with their classes, saves them with save_pretrained and
records their logits; step 2 loads the directories with muxdeploy, compares logits, and exports each to ONNX.
"""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np
import torch


def make(argv: list[str]) -> None:
    sys.path.insert(0, argv[0])
    from datamux_pretraining.models.multiplexing_pretraining_bert import (
        MuxedBertForSequenceClassification,
        MuxedBertForTokenClassification,
    )
    from datamux_pretraining.models.multiplexing_pretraining_electra import (
        MuxedElectraForSequenceClassification,
        MuxedElectraForTokenClassification,
    )
    from transformers import BertConfig, ElectraConfig

    out = argv[1]
    cases = []
    for bb, task, cls in [
        ("bert", "seq", MuxedBertForSequenceClassification),
        ("bert", "tok", MuxedBertForTokenClassification),
        ("electra", "seq", MuxedElectraForSequenceClassification),
        ("electra", "tok", MuxedElectraForTokenClassification),
    ]:
        for demux in ["index", "index_pos"]:
            for mux in (
                ["gaussian_hadamard", "binary_hadamard", "random_ortho", "gaussian_attention_v2"]
                if bb == "bert"
                else ["gaussian_hadamard", "binary_hadamard"]
            ):
                if mux == "gaussian_attention_v2" and demux != "index_pos":
                    continue  # their code fails on this pair (mask and prefixed length disagree)
                torch.manual_seed(len(cases))
                n = 4
                Cfg = BertConfig if bb == "bert" else ElectraConfig
                extra = {} if bb == "bert" else {"embedding_size": 16}
                if mux == "gaussian_attention_v2":  # their ElectraLayer inside MUX-BERT has no sdpa class
                    extra["attn_implementation"] = "eager"
                cfg = Cfg(
                    **extra,
                    vocab_size=1000,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    intermediate_size=64,
                    max_position_embeddings=64,
                    num_labels=3,
                    num_instances=n,
                    muxing_variant=mux,
                    demuxing_variant=demux,
                    retrieval_loss_coeff=0.1,
                    task_loss_coeff=0.9,
                    retrieval_percentage=1.0,
                    gaussian_hadamard_norm=1.0,
                    binary_hadamard_epsilon=0.0,
                    learn_muxing=False,
                    num_hidden_demux_layers=3,
                )
                model = cls(cfg).eval()
                with torch.no_grad():  # non-trivial LayerNorms/biases so mistakes show
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.05)
                name = f"{bb}-{task}-{demux}-{mux}"
                model.save_pretrained(f"{out}/{name}", safe_serialization=False)
                g = torch.Generator().manual_seed(1)
                ids = torch.randint(5, 1000, (3 * n, 16), generator=g)
                ids[1, 10:] = 0
                ids[5, 3:] = 0
                ids[6, :] = 0  # an all-pad (filler) instance
                with torch.no_grad():
                    logits = model(input_ids=ids.clone(), attention_mask=(ids != 0).long(), return_dict=False)[0]
                np.savez(f"{out}/{name}/ref_io.npz", ids=ids.numpy(), logits=logits.numpy())
                cases.append(name)
                print(name, tuple(logits.shape))
    json.dump(cases, open(f"{out}/cases.json", "w"))


def compare(out: str) -> None:
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    worst = 0.0
    for name in json.load(open(f"{out}/cases.json")):
        io = np.load(f"{out}/{name}/ref_io.npz")
        ids, ref = io["ids"], io["logits"]
        ck = load_checkpoint(f"{out}/{name}", seq_len=16)
        n = ck.config.num_instances
        with torch.no_grad():
            ours = ck.model(torch.from_numpy(ids.reshape(-1, n, 16))).numpy()
        ours = ours.reshape(-1, *ours.shape[2:])
        if "-tok-index-" in name:
            ref = ref[:, n + 1 :]
        err = float(np.abs(ours - ref).max())
        with tempfile.TemporaryDirectory() as d:
            res = export_bundle(ck.export_spec(), n, d, max_batch=4)
        worst = max(worst, err)
        print(f"{name:35s} torch-vs-reference {err:.2e}  onnx-vs-torch {res.max_abs_diff:.2e}")
    print("worst", worst)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2:])
    else:
        compare(sys.argv[2])
