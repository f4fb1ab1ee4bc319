"""Each text model family through export -> build-engine (onnxruntime, FP32 and INT8) -> runtime -> validate.

(The MUX-PLM import goes the same way in tests/muxdeploy/importers/test_muxplm.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_model
from pipeline_helpers import deploy_and_check

from muxdeploy.checkpoint import save_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_text_family_deploys_end_to_end(tmp_path: Path, task: str) -> None:
    labels = ["neg", "neutral", "pos"] if task == "sequence_classification" else list("OBIES")
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, tiny_model(task=task, num_labels=len(labels)), labels=labels)
    deploy_and_check(ckpt, 4, tmp_path, vocab=1000, labels=len(labels), token_task=task == "token_classification")
