"""Read a PyTorch weights file safely: `torch.load(weights_only=True)`, every failure one UserInputError line."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from muxdeploy.core.errors import UserInputError

_UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global|not an allowed global)\W*(?:GLOBAL )?([\w.]+)?")


def torch_load_weights(path: Path) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line UserInputError."""
    try:
        with warnings.catch_warnings():
            # torch warns on stderr about the pickle protocol of files it did not write; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only reports every failure as "Weights only load failed"; only an unsupported GLOBAL means
        # the file pickles code (a class or function); anything else means it is no checkpoint at all
        unsafe = _UNSAFE_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if unsafe:
            what = f" ({unsafe.group(1)})" if unsafe.group(1) else ""
            raise UserInputError(
                f"{path} needs arbitrary code to load{what}, which muxdeploy refuses (weights_only=True); "
                "re-save it as a dict of tensors and plain values"
            ) from None
        raise UserInputError(
            f"{path} is not a PyTorch checkpoint file; pass a ckpt.pt written by torch.save or a reference directory"
        ) from None
