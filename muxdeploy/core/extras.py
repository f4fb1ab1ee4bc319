"""Install extras: which extra brings which optional module, and the one-line error a command raises without it.

The base install (numpy, click, tqdm, tokenizers) runs the runtime and its commands (run, bench, inspect) once a
backend is there: [cpu] (onnxruntime) or [gpu] (onnxruntime-gpu; the two ship the same `onnxruntime` module, so
install one of them), [tensorrt], or on Jetson [jetson] beside JetPack's TensorRT. The model side (train, export,
build-engine, validate, demo) needs [export]; `serve` needs [serve]. pyproject.toml lists the extras.
"""

from __future__ import annotations

import importlib.util

from muxdeploy.core.errors import UserInputError

# optional module -> the extra that installs it (onnxruntime: [cpu], or [gpu] on a CUDA machine)
EXTRA_OF = {
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "onnxruntime": "cpu",
    "starlette": "serve",
    "uvicorn": "serve",
    "grpc": "serve",
    "tritonclient.grpc": "serve",
}
EXPORT_MODULES = ("torch", "onnx", "onnxscript", "safetensors")


class MissingExtra(UserInputError):
    """A command's optional modules are not installed; the message names the extra to install (exit code 2)."""


def installed(module: str) -> bool:
    """True when `module` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module without a spec
        return False


def require(what: str, *modules: str) -> None:
    """Raise MissingExtra naming the extras to install when any of `modules` (keys of EXTRA_OF) is missing.

    `what` names the command or function in the message, e.g. "muxdeploy export".
    """
    missing = [m for m in modules if not installed(m)]
    if not missing:
        return
    extras = sorted({EXTRA_OF[m] for m in missing}, key=list(dict.fromkeys(EXTRA_OF.values())).index)
    gpu = " (on a CUDA machine [gpu] instead of [cpu])" if "cpu" in extras else ""
    names = ", ".join(missing)
    raise MissingExtra(
        f"{what} needs {names}, not installed here; install the extra: pip install 'muxdeploy[{','.join(extras)}]'{gpu}"
    )
