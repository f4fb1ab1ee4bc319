"""`muxdeploy inspect --check-engine`: can this machine run the bundle's TensorRT engine, and does it compute
what its ONNX computes? One finding per line, so the first user with TensorRT can tell exactly what fails.

Steps, each a finding: the engine's file and sha256; the TensorRT module, the GPU and the engine's recorded facts
against them (a plan that cannot run here stops with one line saying why: no TensorRT, no GPU, TensorRT-RTX on a
GPU it does not support, another TensorRT version ...); deserialization (TensorRT's own error quoted); one full
batch and one partial batch of random groups; the same groups through the engine's source ONNX on onnxruntime
CPU, compared within a tolerance per precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from muxdeploy.core.errors import MuxError
from muxdeploy.core.manifest import ENGINE_FORMATS, GROUPED, REFERENCE_ONNX, Manifest

# max abs diff allowed between the engine and its source ONNX, relative to the output's scale (at least 1)
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1, "fp8": 0.1}


class CannotCheck(MuxError):
    """The engine cannot be checked on this machine (one line: why)."""

    exit_code = 2


@dataclass
class Finding:
    """One line of the report: ok, FAIL, or info."""

    status: str
    text: str

    def line(self) -> str:
        return f"{self.status}: {self.text}"


def pick_engine(manifest: Manifest, precision: str = "auto") -> str:
    """The grouped engine to check: of `precision`, else the first recorded. CannotCheck when there is none."""
    names = manifest.artifacts_where(
        format=ENGINE_FORMATS, precision=None if precision == "auto" else precision, signature=GROUPED
    )
    if not names:
        which = "" if precision == "auto" else f"{precision} "
        raise CannotCheck(
            f"cannot check an engine: bundle {manifest.bundle} has no {which}TensorRT engine; "
            "build one with `muxdeploy build-engine --backend tensorrt`"
        )
    return names[0]


def random_groups(manifest: Manifest, batch: int, seed: int = 0) -> np.ndarray:
    """`batch` random N-slot groups of the bundle's input (token ids within the vocabulary, or images)."""
    inp = manifest.data["inputs"][0]
    shape = (batch, *[int(d) for d in inp["shape"][1:]])
    rng = np.random.default_rng(seed)
    dtype = np.dtype(inp["dtype"])
    if dtype.kind in "iu":
        return rng.integers(0, int(manifest.vocab_size or 1000), size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def check_engine(manifest: Manifest, precision: str = "auto", device_id: int = 0) -> list[Finding]:
    """Run every step; raises CannotCheck (one line) when the engine cannot run on this machine at all."""
    from muxdeploy.runtimes.backends import Selection, create
    from muxdeploy.runtimes.backends.engine_facts import current_gpu, engine_mismatch, engine_module
    from muxdeploy.runtimes.backends.tensorrt import describe_plan

    name = pick_engine(manifest, precision)
    facts = manifest.artifacts[name]
    manifest.verify_artifact(name)
    findings = [Finding("ok", f"{name}: sha256 matches the manifest; built with {describe_plan(facts)}")]
    module = engine_module(facts)
    why = engine_mismatch(facts, device_id=device_id)
    if why and why.endswith("is not installed here"):
        raise CannotCheck(f"cannot check {name} here: {why} (TensorRT runs engines; this machine has none)")
    gpu = current_gpu(device_id)
    if gpu is None:
        raise CannotCheck(
            f"cannot check {name} here: no CUDA GPU answers (cuda-python or pycuda, a driver and a GPU are needed)"
        )
    if why:
        raise CannotCheck(f"cannot check {name} here: {why}")
    findings.append(Finding("ok", f"{module} and {gpu[0]} (compute capability {gpu[1][0]}.{gpu[1][1]}) fit it"))
    prec = str(facts.get("precision"))
    max_batch = int((facts.get("build_flags") or {}).get("profile", {}).get("max") or manifest.max_batch)
    backend = create(Selection("tensorrt", name, prec), manifest, max_batch, device_id=device_id)
    try:
        backend.activate()
    except MuxError as exc:
        return [*findings, Finding("FAIL", f"deserialize/activate: {exc}")]
    findings.append(Finding("ok", f"deserialized; batches 1..{backend.max_batch} (profile min {backend.profile_min})"))
    try:
        findings += _compare(manifest, name, prec, backend)
    finally:
        backend.deactivate()
    return findings


def _compare(manifest: Manifest, name: str, precision: str, backend: Any) -> list[Finding]:
    """A full and a partial batch through the engine and through its source ONNX on onnxruntime CPU."""
    from muxdeploy.core.extras import installed
    from muxdeploy.runtimes.backends.onnxruntime import make_session

    findings: list[Finding] = []
    batches = sorted({backend.max_batch, max(1, backend.max_batch // 2 + 1) if backend.max_batch > 1 else 1})
    outs = {}
    for batch in batches:
        feed = random_groups(manifest, batch, seed=batch)
        start = time.perf_counter()
        try:
            outs[batch] = (feed, backend.infer(feed))
        except MuxError as exc:
            findings.append(Finding("FAIL", f"batch of {batch} group(s): {exc}"))
            continue
        ms = (time.perf_counter() - start) * 1e3
        findings.append(Finding("ok", f"batch of {batch} group(s) ran in {ms:.1f} ms (first run, includes warm-up)"))
    source = str(manifest.artifacts[name].get("source_onnx") or REFERENCE_ONNX)
    if not installed("onnxruntime"):
        return [*findings, Finding("FAIL", f"not compared with {source}: onnxruntime is not installed here")]
    session = make_session(manifest.verify_artifact(source))
    for batch, (feed, got) in outs.items():
        want = session.run(None, {session.get_inputs()[0].name: feed})[0]
        diff = float(np.abs(got - want).max())
        tol = TOLERANCE.get(precision, 0.1) * max(1.0, float(np.abs(want).max()))
        agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
        status = "ok" if diff <= tol and np.isfinite(got).all() else "FAIL"
        findings.append(
            Finding(
                status,
                f"batch of {batch} vs {source} on onnxruntime CPU: max abs diff {diff:.3g} (tolerance {tol:.3g}), "
                f"argmax agreement {agree:.2%}",
            )
        )
    return findings
