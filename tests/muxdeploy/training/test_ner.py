"""NER: WordPiece alignment, and a tiny model trained, exported and scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
from muxdeploy.evaluation.metrics import IGNORE_LABEL as IGNORE
from muxdeploy.evaluation.metrics import entity_scores
from muxdeploy.exporters.onnx import export_bundle
from muxdeploy.models.presets import preset_config
from muxdeploy.runtimes.packing import pack_groups, unpack_groups
from muxdeploy.training.ner import decode_words, encode_ner, predict_tokens, train_ner

WORDS = ["the", "a", "went", "to", "saw", "with", "and", "home", "park", "today"]
NAMES = ["alice", "bob", "carol", "dave", "paris", "london", "rome"]


def _tokenizer(tmp_path: Path) -> Tokenizer:
    vocab = ["[PAD]", "[unused0]", "[unused1]", *[f"[unused{i}]" for i in range(2, 8)], "[UNK]", "[CLS]", "[SEP]"]
    vocab += [*WORDS, *NAMES, "new", "##york", "york", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return Tokenizer.from_str(BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True).to_str())


def test_encode_ner_labels_first_subtoken_only(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    label2id = {"O": 0, "B-loc": 1, "I-loc": 2}
    enc = encode_ner([(["went", "to", "new", "yorks"], ["O", "O", "B-loc", "I-loc"])], tok, label2id, seq_len=10)
    toks = [tok.id_to_token(int(i)) for i in enc.ids[0]]
    assert toks[:7] == ["[CLS]", "went", "to", "new", "york", "##s", "[SEP]"] and toks[7:] == ["[PAD]"] * 3
    assert enc.labels[0].tolist() == [IGNORE, 0, 0, 1, 2, IGNORE, *[IGNORE] * 4]
    assert enc.word_pos[0].tolist() == [1, 2, 3, 4]
    short = encode_ner([(["went", "to", "new", "yorks"], ["O", "O", "B-loc", "I-loc"])], tok, label2id, seq_len=5)
    assert [tok.id_to_token(int(i)) for i in short.ids[0]] == ["[CLS]", "went", "to", "new", "[SEP]"]
    assert short.word_pos[0].tolist() == [1, 2, 3, -1]  # truncated word: predicted "O"
    logits = np.zeros((1, 5, 3), dtype=np.float32)
    logits[0, 3, 1] = 1
    assert decode_words(logits, short.word_pos, ["O", "B-loc", "I-loc"]) == [["O", "O", "B-loc", "O"]]


def test_tiny_ner_model_trains_exports_and_scores_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sents = []
    for _ in range(240):
        words = list(rng.choice(WORDS, size=6))
        tags = ["O"] * 6
        i = int(rng.integers(0, 6))
        words[i], tags[i] = str(rng.choice(NAMES)), "B-ent"
        sents.append((words, tags))
    labels = ["B-ent", "O"]
    tok = _tokenizer(tmp_path)
    enc = encode_ner(sents, tok, {t: i for i, t in enumerate(labels)}, seq_len=10)
    cfg = preset_config(
        "tiny", 2, task="token_classification", num_labels=2, seq_len=10, vocab_size=tok.get_vocab_size()
    )
    torch.set_num_threads(1)
    model = train_ner(cfg, enc.ids[:200], enc.labels[:200], epochs=8, lr=3e-3)
    gold = [t for _, t in sents[200:]]
    dev_ids, dev_pos = enc.ids[200:], enc.word_pos[200:]
    pt = entity_scores(gold, decode_words(predict_tokens(model, dev_ids, 0), dev_pos, labels))
    assert pt["f1"] > 0.8, pt
    save_checkpoint(tmp_path / "ner.pt", model, tokenizer_json=tok.to_str(), labels=labels)
    res = export_bundle(load_checkpoint(tmp_path / "ner.pt").export_spec(), 2, tmp_path / "b", max_batch=8)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    groups = pack_groups(dev_ids, 2, np.zeros(10, dtype=np.int32))
    logits = unpack_groups(
        np.concatenate([sess.run(None, {"input_ids": groups[i : i + 8]})[0] for i in range(0, 20, 8)]), 40
    )
    assert entity_scores(gold, decode_words(logits, dev_pos, labels)) == pt
