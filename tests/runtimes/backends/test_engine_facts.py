"""Engine facts vs this machine, and the TensorRT backend's pure logic, on real engine-fact records.

The records below are what `build-engine` writes (exporters/tensorrt.py `build_engine`): an Orin DLA engine
built with JetPack 6's TensorRT 10.3, a version-compatible H100 engine, and a TensorRT-RTX engine built on a
GPU-less machine for SM89. No TensorRT or GPU is needed: these are the rules the runtime applies before it
deserializes anything (docs/PRECISION.md, "TensorRT review" #2, #3, #4, #11, #12, #15).
"""

from __future__ import annotations

import numpy as np
import pytest

from muxdeploy.runtimes.backends.base import TensorSpec
from muxdeploy.runtimes.backends.engine_facts import (
    engine_flavor,
    engine_mismatch,
    graph_batch_sizes,
    padded_batch,
    version_mismatch,
)
from muxdeploy.runtimes.backends.tensorrt import IoTensor, check_bindings

ORIN_DLA = {
    "format": "tensorrt",
    "precision": "fp16",
    "tensorrt_flavor": "tensorrt",
    "tensorrt_module": "tensorrt",
    "tensorrt_version": "10.3.0",
    "platform": "linux-aarch64",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "strongly_typed": False,
    "precision_used": "fp16",
    "version_compatible": False,
    "hardware_compatibility_level": "none",
    "dla_core": 0,
    "fixed_batch": 8,
    "build_flags": {"profile": {"min": 8, "opt": 8, "max": 8}, "dla_core": 0, "legacy_weak_typed": True},
}
H100_VC = {
    "format": "tensorrt",
    "precision": "fp8",
    "tensorrt_flavor": "tensorrt",
    "tensorrt_module": "tensorrt",
    "tensorrt_version": "10.7.0.23",
    "platform": "linux-x86_64",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "version_compatible": True,
    "hardware_compatibility_level": "none",
    "build_flags": {"profile": {"min": 1, "opt": 64, "max": 64}, "version_compatible": True},
}
RTX_SM89 = {
    "format": "tensorrt-rtx",
    "precision": "int8",
    "tensorrt_module": "tensorrt_rtx_bindings",  # an older record: the import name only
    "tensorrt_version": "1.7.1.116",
    "platform": "linux-x86_64",
    "build_flags": {"profile": {"min": 1, "opt": 4, "max": 8}, "compute_capabilities": ["SM89"]},
}
ORIN, H100, H200, RTX4090 = ("Orin", (8, 7)), ("NVIDIA H100", (9, 0)), ("NVIDIA H200", (9, 0)), ("RTX 4090", (8, 9))


def test_plans_that_are_not_version_compatible_need_the_exact_build() -> None:
    here = {"platform_here": "linux-aarch64", "gpu": ORIN}
    assert engine_mismatch(ORIN_DLA, have="10.3.0", **here) is None
    assert engine_mismatch(ORIN_DLA, have="10.3.0.30", **here) is None  # recorded without the build field
    assert "plans need the same version" in (engine_mismatch(ORIN_DLA, have="10.3.1", **here) or "")
    built = {**ORIN_DLA, "tensorrt_version": "10.3.0.26"}
    assert engine_mismatch(built, have="10.3.0.26", **here) is None
    assert "plans need the same version" in (engine_mismatch(built, have="10.3.0.30", **here) or "")  # review #15


def test_version_compatible_plans_run_on_newer_runtimes_including_10_to_11() -> None:
    assert version_mismatch(H100_VC, "10.7.0.23") is None
    assert version_mismatch(H100_VC, "10.13.3") is None
    assert version_mismatch(H100_VC, "11.1.0") is None  # review #11: "TensorRT 10 VC engines run with 11"
    assert "needs 10.x or 11.x, same or newer" in (version_mismatch(H100_VC, "10.3.0") or "")
    assert "needs 10.x or 11.x" in (version_mismatch(H100_VC, "12.0.0") or "")
    eleven = {**H100_VC, "tensorrt_version": "11.1.0"}
    assert "needs 11.x" in (version_mismatch(eleven, "10.13.0") or "")


def test_exclude_lean_runtime_plans_are_refused_with_the_reason() -> None:
    """Review #3: such plans load only through Runtime.load_runtime, which muxdeploy does not call."""
    lean = {**H100_VC, "build_flags": {**H100_VC["build_flags"], "exclude_lean_runtime": True}}
    assert "Runtime.load_runtime" in (version_mismatch(lean, "10.7.0.23") or "")
    assert "Runtime.load_runtime" in (engine_mismatch(lean, have="10.7.0.23", gpu=H100) or "")


def test_platform_and_gpu_are_checked() -> None:
    x86 = {"platform_here": "linux-x86_64"}
    assert engine_mismatch(H100_VC, have="10.7.0.23", gpu=H200, **x86) is None  # same compute capability 9.0
    assert "not portable across platforms" in (
        engine_mismatch(H100_VC, have="10.7.0.23", gpu=H100, platform_here="linux-aarch64") or ""
    )
    assert "this GPU is Orin (compute capability 8.7)" in (
        engine_mismatch({**H100_VC, "platform": None}, have="10.7.0.23", gpu=ORIN) or ""
    )


def test_rtx_plans_are_judged_by_their_targets_and_rtx_support() -> None:
    assert engine_flavor(RTX_SM89) == "tensorrt-rtx"  # review #12: from the format / import name of old records
    x86 = {"have": "1.7.1.116", "platform_here": "linux-x86_64"}
    assert engine_mismatch(RTX_SM89, gpu=RTX4090, **x86) is None
    assert "built for compute capability SM89" in (engine_mismatch(RTX_SM89, gpu=("RTX A6000", (8, 6)), **x86) or "")
    # the H200 of the lent machine: TensorRT-RTX does not run there at all
    assert "TensorRT-RTX plans run on compute capability" in (engine_mismatch(RTX_SM89, gpu=H200, **x86) or "")


def test_partial_batches_are_padded_to_the_profile_minimum() -> None:
    """Review #2: a fixed-batch DLA engine (8/8/8) runs every batch at 8; --min-batch 2 pads a batch of 1."""
    assert [padded_batch(b, 8, 8) for b in (1, 5, 8)] == [8, 8, 8]
    assert [padded_batch(b, 2, 16) for b in (1, 2, 3, 16)] == [2, 2, 3, 16]
    with pytest.raises(ValueError, match=r"outside 1\.\.8"):
        padded_batch(9, 8, 8)
    with pytest.raises(ValueError, match=r"outside 1\.\.8"):
        padded_batch(0, 1, 8)


def test_cuda_graph_sizes_and_the_size_a_batch_runs_in() -> None:
    """Review #5: one context per captured size; a batch runs in the smallest captured size that holds it."""
    assert graph_batch_sizes(1, 8) == (1, 2, 4, 8)
    assert graph_batch_sizes(1, 12) == (1, 2, 4, 8, 12)
    assert graph_batch_sizes(3, 12) == (3, 4, 8, 12)
    assert graph_batch_sizes(8, 8) == (8,)  # a DLA engine: one size
    sizes = graph_batch_sizes(1, 12)
    assert [padded_batch(b, 1, 12, sizes) for b in (1, 3, 5, 9, 12)] == [1, 4, 8, 12, 12]


def test_every_engine_output_gets_an_address_and_unknown_inputs_are_refused() -> None:
    """Review #4: extra outputs are bound (sized per batch) instead of left without an address."""
    spec_in = TensorSpec("input_ids", np.dtype("int32"), (4, 16))
    spec_out = TensorSpec("logits", np.dtype("float32"), (4, 3))
    io = [
        IoTensor("input_ids", True, np.dtype("int32"), (-1, 4, 16)),
        IoTensor("logits", False, np.dtype("float32"), (-1, 4, 3)),
        IoTensor("hidden", False, np.dtype("float16"), (-1, 4, 16, 32)),
    ]
    assert check_bindings(io, spec_in, spec_out) is None
    assert [t.nbytes(8) for t in io] == [8 * 4 * 16 * 4, 8 * 4 * 3 * 4, 8 * 4 * 16 * 32 * 2]
    extra_input = [*io, IoTensor("attention_mask", True, np.dtype("int32"), (-1, 4, 16))]
    assert "has inputs ['input_ids', 'attention_mask']" in (check_bindings(extra_input, spec_in, spec_out) or "")
    dynamic = [io[0], IoTensor("logits", False, np.dtype("float32"), (-1, 4, -1))]
    assert "dynamic dimension besides the batch" in (check_bindings(dynamic, spec_in, spec_out) or "")
