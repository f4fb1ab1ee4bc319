"""The shipped demo models: they load, score on the held-out split what their provenance says, and stay small."""

from __future__ import annotations

import json

import pytest
from reference_dirs import single_torch_thread

from muxdeploy.checkpoint import MODEL_DIR_FILES, load_checkpoint
from muxdeploy.shipped import SHIPPED_DIR, shipped_dev_data, shipped_models, shipped_provenance
from muxdeploy.training.classifier import evaluate_classifier
from muxdeploy.training.tokenizer import tokenize_texts, tokenizer_from_json

PROVENANCE_KEYS = {
    "command",
    "seed",
    "data_split",
    "steps",
    "train_seconds",
    "device",
    "held_out_accuracy",
    "retrieval_warmup_token_accuracy",
}


def test_the_four_models_and_the_held_out_split_are_shipped_under_30_mb():
    assert sorted(shipped_models()) == [1, 2, 5, 10]
    rows = [json.loads(line) for line in shipped_dev_data().read_text().splitlines()]
    assert len(rows) == 1057 and {r["label"] for r in rows} == {0, 1}
    total = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert total < 30 * 2**20, f"shipped models take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_shipped_model_scores_its_provenance_on_the_held_out_split(n):
    path = shipped_models()[n]
    assert sorted(p.name for p in path.iterdir()) == sorted(MODEL_DIR_FILES)
    provenance = shipped_provenance(n)
    assert PROVENANCE_KEYS <= set(provenance), PROVENANCE_KEYS - set(provenance)
    ckpt = load_checkpoint(path)
    assert ckpt.config.num_instances == n and ckpt.labels == ["negative", "positive"]
    rows = [json.loads(line) for line in shipped_dev_data().read_text().splitlines()]
    ids = tokenize_texts(tokenizer_from_json(ckpt.tokenizer_json), [r["text"] for r in rows], ckpt.config.seq_len)
    with single_torch_thread():
        accuracy = evaluate_classifier(ckpt.model, ids, [r["label"] for r in rows])
    assert accuracy == pytest.approx(provenance["held_out_accuracy"], abs=1.5 / len(rows))  # at most one flip
