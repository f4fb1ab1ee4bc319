"""A bundle -> a Triton model repository (config.pbtxt + model files), written atomically.

Two layouts:
- default ("instance-batched"): one model whose batch axis is instances. Triton's dynamic batcher
  collects single instances ([L] each, batched to [M, L]) and the graph packs them into N-slot groups
  (exporters/instance_batch.py). `preferred_batch_size` is in multiples of N.
- `packer="python"`: a Python-backend packer model (validation, ragged lengths, per-request errors)
  in front of the grouped engine model ([B, N, L]); one BLS request per engine batch.

The engine step is `tensorrt_plan` (a matching engine is in the bundle), `onnxruntime_onnx`, or a
Python-backend model running onnxruntime (`python-onnxruntime`: for Triton builds without the
onnxruntime backend, e.g. the tritonserver inside nvidia-pytriton).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.extras import require
from muxdeploy.core.manifest import (
    ENGINE_FORMATS,
    GROUPED,
    INSTANCES,
    MANIFEST_NAME,
    REFERENCE_ONNX,
    Manifest,
    instance_onnx_name,
)

ENGINE_BACKENDS = ("auto", "onnxruntime", "tensorrt", "python-onnxruntime")
PACKERS = ("none", "python")
# the file a Triton model version directory holds, by platform/backend (Triton's default_model_filename)
_TRITON_MODEL_FILE = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.py"}
_TRITON_DTYPES = {"int32": "TYPE_INT32", "int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
# numpy-only: the packer and what it imports, copied as muxdeploy/core/* and muxdeploy/runtimes/*
_PACKER_FILES = {
    "core": ("__init__.py", "errors.py", "fsutil.py", "manifest.py"),
    "runtimes": ("__init__.py", "packing.py"),
}


@dataclass
class TritonRepo:
    """What `export_triton` wrote."""

    root: Path
    public_model: str
    models: dict[str, str] = field(default_factory=dict)  # model name -> platform/backend
    files: list[Path] = field(default_factory=list)


def _dims(shape: list[Any]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor(name: str, dtype: str, dims: list[Any], ragged: bool = False) -> str:
    if dtype not in _TRITON_DTYPES:
        raise UserInputError(
            f"tensor {name} has dtype {dtype}, which export-triton cannot declare; re-export the bundle"
        )
    extra = "\n    allow_ragged_batch: true" if ragged else ""
    return f'  {{\n    name: "{name}"\n    data_type: {_TRITON_DTYPES[dtype]}\n    dims: {_dims(dims)}{extra}\n  }}'


def model_config(
    name: str,
    runtime: str,
    max_batch_size: int,
    inputs: list[str],
    outputs: list[str],
    preferred: list[int],
    max_queue_delay_us: int,
    instance_count: int = 1,
    kind: str = "KIND_AUTO",
    parameters: dict[str, str] | None = None,
) -> str:
    """config.pbtxt text. `runtime` is a platform (tensorrt_plan, onnxruntime_onnx) or "python"."""
    head = f'backend: "{runtime}"' if runtime == "python" else f'platform: "{runtime}"'
    lines = [f'name: "{name}"', head, f"max_batch_size: {max_batch_size}"]
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(outputs) + "\n]")
    batching = [f"  preferred_batch_size: {_dims(preferred)}"] if preferred else []
    batching.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
    lines.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    lines.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {kind}\n  }}\n]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def preferred_sizes(n: int, max_instances: int) -> list[int]:
    """Preferred batch sizes in instances: N, 2N, 4N, ... up to the largest batch (all multiples of N)."""
    sizes, groups = [], 1
    while groups * n <= max_instances:
        sizes.append(groups * n)
        groups *= 2
    if max_instances % n == 0 and max_instances not in sizes:
        sizes.append(max_instances)
    return sizes


def _find_engine(manifest: Manifest, signature: str) -> str | None:
    """File name of a TensorRT plan in the bundle with this signature (INSTANCES or GROUPED)."""
    names = manifest.artifacts_where(format=ENGINE_FORMATS, signature=signature)
    return next((name for name in names if manifest.artifact_path(name).is_file()), None)


def _pick_engine(manifest: Manifest, requested: str, signature: str) -> tuple[str, str | None]:
    """(engine backend, plan file or None) for the engine step."""
    plan = _find_engine(manifest, signature)
    what = "instance-batched" if signature == INSTANCES else "grouped"
    if requested == "tensorrt" and plan is None:
        raise UserInputError(
            f"--engine-backend tensorrt needs a {what} TensorRT engine in {manifest.bundle} and there is none; "
            "build one with `muxdeploy build-engine`, or use --engine-backend onnxruntime"
        )
    if requested == "auto":
        return ("tensorrt", plan) if plan else ("onnxruntime", None)
    return requested, plan if requested == "tensorrt" else None


def _instance_onnx(manifest: Manifest, dest: Path) -> None:
    """Copy (or build and parity-check) the instance-batched ONNX to `dest`."""
    from muxdeploy.exporters.instance_batch import write_instance_batch

    name = instance_onnx_name()
    if name in manifest.artifacts:
        shutil.copyfile(manifest.verify_artifact(name), dest)
        return
    require(f"muxdeploy export-triton (no {name} in the bundle: building it)", "onnx", "onnxruntime")
    write_instance_batch(manifest.verify_artifact(REFERENCE_ONNX), dest, manifest, tolerance=1e-4)


def export_triton(
    bundle: str | Path,
    out: str | Path,
    name: str = "muxdeploy",
    packer: str = "none",
    engine_backend: str = "auto",
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    force: bool = False,
    python_env: str | Path | None = None,
) -> TritonRepo:
    """Write a Triton model repository for `bundle` into `out` (see the module docstring).

    `python_env`: a Python environment directory (a venv or an unpacked conda-pack, with bin/activate)
    that Python-backend models run in (Triton's EXECUTION_ENV_PATH); it needs numpy (and onnxruntime
    for the python-onnxruntime engine). Default: the Python that Triton's stub finds.
    """
    if packer not in PACKERS:
        raise UserInputError(f"--packer {packer!r} is not one of {', '.join(PACKERS)}")
    if engine_backend not in ENGINE_BACKENDS:
        raise UserInputError(f"--engine-backend {engine_backend!r} is not one of {', '.join(ENGINE_BACKENDS)}")
    if instances < 1:
        raise UserInputError(f"--instances must be >= 1, got {instances}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserInputError(f"--name {name!r}: use letters, digits, '-' and '_' only (it is a directory name)")
    manifest = Manifest.load(bundle)
    if manifest.data["inputs"][0]["dtype"] != "int32":
        raise UserInputError("export-triton serves token-id models (input_ids int32); this bundle takes images")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserInputError(f"{out} exists and is not empty; choose another -o or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        env = None
        if python_env is not None:
            env = Path(python_env).resolve()
            if not (env / "bin" / "activate").is_file():
                raise UserInputError(
                    f"--python-env {python_env} has no bin/activate; pass a venv or an unpacked conda-pack"
                )
        repo = _write(manifest, staging, name, packer, engine_backend, max_queue_delay_us, instances, env)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    repo.root = out
    repo.files = [out / p.relative_to(staging) for p in repo.files]
    return repo


def _write(
    manifest: Manifest,
    root: Path,
    name: str,
    packer: str,
    engine_backend: str,
    delay_us: int,
    count: int,
    env: Path | None,
) -> TritonRepo:
    n, seq_len, max_batch = manifest.num_instances, manifest.seq_len, manifest.max_batch
    inp, outp = manifest.data["inputs"][0], manifest.data["outputs"][0]
    out_tail = list(outp["shape"][2:])
    repo = TritonRepo(root, name)

    def write(path: Path, text: str | None = None, src: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(src, path)
        else:
            path.write_text(text or "")
        repo.files.append(path)

    signature = INSTANCES if packer == "none" else GROUPED
    backend, plan = _pick_engine(manifest, engine_backend, signature)
    engine_name = name if packer == "none" else f"{name}_engine"
    model_dir = root / engine_name
    if plan is not None:  # an engine's optimization profile caps the batch (instances or groups)
        facts = manifest.artifacts[plan]
        profile_max = facts.get("build_flags", {}).get("profile", {}).get("max")  # as build-engine records it
        limit = facts.get("max_instances" if packer == "none" else "max_batch", profile_max)
        if limit is not None:
            max_batch = min(max_batch, int(limit) // (n if packer == "none" else 1))
    if packer == "none":
        max_bs, in_dims, out_dims = max_batch * n, [seq_len], out_tail
        preferred = preferred_sizes(n, max_bs)
    else:
        max_bs, in_dims, out_dims = max_batch, [n, seq_len], [n, *out_tail]
        preferred = []
    inputs = [_tensor(inp["name"], inp["dtype"], in_dims)]
    outputs = [_tensor(outp["name"], outp["dtype"], out_dims)]
    if backend == "tensorrt":
        write(model_dir / "1" / _TRITON_MODEL_FILE["tensorrt_plan"], src=manifest.artifact_path(plan))
        runtime, kind = "tensorrt_plan", "KIND_GPU"
    else:
        onnx_dest = model_dir / "1" / _TRITON_MODEL_FILE["onnxruntime_onnx"]
        onnx_dest.parent.mkdir(parents=True, exist_ok=True)
        if packer == "none":
            _instance_onnx(manifest, onnx_dest)
            repo.files.append(onnx_dest)
        else:
            write(onnx_dest, src=manifest.verify_artifact(REFERENCE_ONNX))
        runtime, kind = ("onnxruntime_onnx", "KIND_AUTO") if backend == "onnxruntime" else ("python", "KIND_CPU")
        if backend == "python-onnxruntime":
            engine_py = Path(__file__).parent / "triton_models" / "onnxruntime_engine.py"
            write(model_dir / "1" / _TRITON_MODEL_FILE["python"], src=engine_py)
    env_params = {"EXECUTION_ENV_PATH": str(env)} if env is not None else {}
    engine_params = env_params if runtime == "python" else {}
    engine_cfg = model_config(
        engine_name, runtime, max_bs, inputs, outputs, preferred, delay_us, count, kind, engine_params
    )
    write(model_dir / "config.pbtxt", engine_cfg)
    repo.models[engine_name] = runtime

    if packer == "python":
        pdir = root / name
        vdir = pdir / "1"
        write(vdir / _TRITON_MODEL_FILE["python"], src=Path(__file__).parent / "triton_models" / "packer.py")
        # the one packer, importable there as muxdeploy.runtimes.packing (numpy only)
        write(vdir / "muxdeploy" / "__init__.py", '"""muxdeploy\'s packer, copied for a Triton Python model."""\n')
        import muxdeploy.core
        import muxdeploy.runtimes

        sources = {"core": Path(muxdeploy.core.__file__).parent, "runtimes": Path(muxdeploy.runtimes.__file__).parent}
        for sub, names in _PACKER_FILES.items():
            for fname in names:
                write(vdir / "muxdeploy" / sub / fname, src=sources[sub] / fname)
        slim = {
            k: manifest.data[k] for k in ("schema", "num_instances", "seq_len", "pad_token_id", "vocab_size", "filler")
        }
        slim["model"] = {"task": manifest.task}
        write(vdir / MANIFEST_NAME, json.dumps(slim, indent=2) + "\n")
        max_instances = max_batch * n
        params = {"engine_model": engine_name, "engine_max_batch": str(max_batch), "strict": "false", **env_params}
        cfg = model_config(
            name,
            "python",
            max_instances,
            [_tensor(inp["name"], inp["dtype"], [-1], ragged=True)],
            [_tensor(outp["name"], outp["dtype"], out_tail)],
            preferred_sizes(n, max_instances),
            delay_us,
            count,
            "KIND_CPU",
            params,
        )
        write(pdir / "config.pbtxt", cfg)
        repo.models[name] = "python (packer)"
    return repo
