"""The sentiment recipe: a subset trains, and its checkpoint exports with parity."""

from __future__ import annotations

import pytest

from muxdeploy.training import sentiment


def test_sentiment_subset_trains_and_its_checkpoint_exports_with_parity(tmp_path) -> None:
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.training.datasets import FetchError

    try:
        run = sentiment.train_sentiment("tiny", num_instances=2, seq_len=16, steps=3, limit=40, progress=False)
    except FetchError as exc:
        pytest.skip(f"registry unreachable: {exc}")
    assert run.result.steps == 3 and run.train_size == 40 and len(run.dev_labels) == 10
    assert 0.0 <= run.dev_accuracy <= 1.0
    labels = sentiment.SENTIMENT_LABELS
    save_checkpoint(tmp_path / "ckpt.pt", run.model, tokenizer_json=run.tokenizer_json, labels=labels)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")  # torch.load(weights_only=True) inside
    assert ckpt.config.seq_len == 16 and ckpt.labels == ["negative", "positive"]
    result = export_bundle(ckpt.export_spec(), 2, tmp_path / "bundle", max_batch=4)
    assert result.max_abs_diff <= 1e-4
    assert (tmp_path / "bundle" / "tokenizer.json").is_file()
