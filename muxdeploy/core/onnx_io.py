"""Reading, checking and writing ONNX files: one-line errors for unreadable models, atomic single-file writes,
and the check that a rewritten graph kept its inputs' and outputs' names and types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muxdeploy.core.errors import PrecisionError, UserInputError
from muxdeploy.core.fsutil import atomic_path


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX model or raise a one-line UserInputError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path} not found; export the bundle first (muxdeploy export CKPT --n N)")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise UserInputError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export the bundle"
        ) from None


def io_types(model: Any) -> dict[str, str]:
    """{name: element type name} for the graph's inputs and outputs."""
    import onnx

    out = {}
    for value in [*model.graph.input, *model.graph.output]:
        out[value.name] = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
    return out


def check_io_kept(reference: Any, candidate: Any, what: str) -> None:
    """Raise PrecisionError when `candidate` changed the names or types of `reference`'s inputs/outputs."""
    ref, got = io_types(reference), io_types(candidate)
    if ref != got:
        raise PrecisionError(f"{what}: graph I/O changed from {ref} to {got}; this is a bug, report it")


def save_onnx_atomic(model: Any, target: str | Path) -> None:
    """Check and write a ModelProto to `target` as one file, atomically."""
    import onnx

    onnx.checker.check_model(model)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
