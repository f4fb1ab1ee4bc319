"""WNUT-16 NER with a token-classification DataMUX model: train, export, run the ONNX on onnxruntime, entity F1.

    PYTHONPATH=$PWD python bench/ner_wnut16.py --n 2 4 --epochs 60 --out bench/out/ner
Trains on 80% of the 2,394 registry sentences, scores the other 20% (seqeval-style exact entity spans) with
PyTorch and with the exported bundle (sentences packed in order into N-slot groups, pad-row fillers).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.core.manifest import REFERENCE_ONNX, Manifest
from muxdeploy.evaluation.metrics import entity_scores
from muxdeploy.exporters.onnx import export_bundle
from muxdeploy.models.presets import preset_config
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import iter_batches, pack_groups, unpack_groups
from muxdeploy.training.datasets import load_wnut16, wnut16_labels
from muxdeploy.training.ner import decode_words, encode_ner, predict_tokens, split_sentences, train_ner
from muxdeploy.training.tokenizer import bert_tokenizer


def onnx_logits(bundle: Path, ids: np.ndarray, name: str = REFERENCE_ONNX) -> np.ndarray:
    m = Manifest.load(bundle)
    sess = make_session(bundle / name)
    groups = pack_groups(ids, m.num_instances, m.filler)
    outs = [sess.run(None, {m.input_name: b})[0] for b in iter_batches(groups, m.max_batch)]
    return unpack_groups(np.concatenate(outs), len(ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="bench/out/ner")
    args = ap.parse_args()
    torch.set_num_threads(1)
    labels = wnut16_labels()
    label2id = {t: i for i, t in enumerate(labels)}
    train, dev = split_sentences(load_wnut16()["train"])
    tok = bert_tokenizer()
    tr = encode_ner(train, tok, label2id, args.seq_len)
    dv = encode_ner(dev, tok, label2id, args.seq_len)
    gold = [tags for _, tags in dev]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| N | preset | epochs | PyTorch F1 (P/R) | ONNX fp32 F1 | export max abs diff | train s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        cfg = preset_config(args.preset, n, task="token_classification", num_labels=len(labels), seq_len=args.seq_len)
        t0 = time.time()
        model = train_ner(cfg, tr.ids, tr.labels, epochs=args.epochs, lr=args.lr)
        secs = time.time() - t0
        ckpt = out / f"wnut_n{n}.pt"
        save_checkpoint(ckpt, model, tokenizer_json=tok.to_str(), labels=labels)
        res = export_bundle(load_checkpoint(ckpt).export_spec(), n, out / f"bundle_n{n}", max_batch=64)
        pt = entity_scores(gold, decode_words(predict_tokens(model, dv.ids, 0), dv.word_pos, labels))
        ox = entity_scores(gold, decode_words(onnx_logits(res.bundle, dv.ids), dv.word_pos, labels))
        print(
            f"| {n} | {args.preset} | {args.epochs} | {pt['f1']:.4f} ({pt['precision']:.3f}/{pt['recall']:.3f}) | "
            f"{ox['f1']:.4f} | {res.max_abs_diff:.1e} | {secs:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
