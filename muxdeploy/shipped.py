"""The trained models shipped inside the package (the demo's default): where they are and what they record.

`muxdeploy/demo_models/` holds one model directory per N (`sentiment-n{N}/`, see
`muxdeploy.checkpoint.save_model_dir`) and the held-out sentences they were scored on. They are made by
`bench/train_demo_models.py` (our own trainer, on a GPU); each provenance.json records the exact command,
seed, data split, steps, time, device and the held-out accuracy of the stored weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from muxdeploy.core.errors import UserInputError

SHIPPED_DIR = Path(__file__).resolve().parent / "demo_models"
DEV_FILE = "sentiment-dev.jsonl"
_MODEL_DIR = re.compile(r"sentiment-n(\d+)")


def shipped_models() -> dict[int, Path]:
    """N -> directory of each shipped sentiment model, in ascending N."""
    found = {}
    for path in SHIPPED_DIR.glob("sentiment-n*"):
        match = _MODEL_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    if not found:
        raise UserInputError(
            f"no shipped models under {SHIPPED_DIR}; reinstall muxdeploy, or train one with `muxdeploy demo --train`"
        )
    return dict(sorted(found.items()))


def shipped_dev_data() -> Path:
    """The held-out sentences the shipped models were scored on, as `validate --data` reads them (text, label)."""
    path = SHIPPED_DIR / DEV_FILE
    if not path.is_file():
        raise UserInputError(f"{path} is missing; reinstall muxdeploy")
    return path


def shipped_provenance(num_instances: int) -> dict[str, Any]:
    """The provenance record of the shipped model at N = `num_instances`."""
    models = shipped_models()
    if num_instances not in models:
        raise UserInputError(f"no shipped model at N={num_instances}; shipped: N = {', '.join(map(str, models))}")
    return json.loads((models[num_instances] / "provenance.json").read_text())
