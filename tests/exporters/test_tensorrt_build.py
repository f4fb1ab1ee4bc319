"""TensorRT engine builds through the one builder code path.

CPU (CI): TensorRT-RTX builds engines without a GPU, so the FP32, FP16 and INT8 graphs of a tiny model are
parsed and built for real. Install: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs.
GPU: the same path with NVIDIA TensorRT (`gpu` marker).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from muxdeploy.calibration.data import synthetic_set
from muxdeploy.calibration.fp8 import quantize_fp8
from muxdeploy.calibration.fp16 import write_fp16
from muxdeploy.calibration.int8 import quantize_int8
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters import tensorrt as trt_builder
from muxdeploy.exporters.ort_optimize import optimize_for_ort
from muxdeploy.exporters.tensorrt import (
    EngineBuildError,
    EngineOptions,
    TensorRTMissing,
    build_engine,
    check_options,
    layer_placement,
    load_trt,
)
from muxdeploy.runtimes.backends.engine_facts import engine_mismatch, this_platform

HAS_RTX = any(importlib.util.find_spec(n) for n in trt_builder.TRT_FLAVORS["tensorrt-rtx"])
needs_rtx = pytest.mark.skipif(
    not HAS_RTX, reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)"
)


@pytest.fixture(scope="module")
def graphs(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FP32, FP16, INT8 and FP8 ONNX of the tiny model."""
    out = tmp_path_factory.mktemp("typed")
    fp32 = tiny_bundle / "model.onnx"
    int8, fp8 = out / "model.int8.onnx", out / "model.fp8.onnx"
    groups = synthetic_set(Manifest.load(tiny_bundle), groups=8).held_out_groups
    quantize_int8(fp32, int8, groups)
    quantize_fp8(fp32, fp8, groups)
    return {"fp32": fp32, "fp16": write_fp16(fp32, out / "model.fp16.onnx"), "int8": int8, "fp8": fp8}


def test_missing_module_is_exit_2_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(trt_builder.TRT_FLAVORS, "tensorrt", ("muxdeploy_no_such_trt",))
    with pytest.raises(TensorRTMissing) as err:
        load_trt("tensorrt")
    assert err.value.exit_code == 2 and 'pip install "muxdeploy[tensorrt]"' in str(err.value)
    with pytest.raises(UserInputError, match="unknown TensorRT flavor"):
        load_trt("openvino")


def test_batch_profile_is_validated() -> None:
    assert EngineOptions(min_batch=1, opt_batch=4, max_batch=8).batches() == (1, 4, 8)
    assert EngineOptions(max_batch=8).batches() == (1, 8, 8)
    with pytest.raises(UserInputError, match="min-batch"):
        EngineOptions(min_batch=4, opt_batch=2, max_batch=8).batches()


def test_dla_profile_is_one_fixed_batch() -> None:
    """Review #1: DLA has no dynamic dimensions, so min = opt = max (the runtime pads partial batches)."""
    assert EngineOptions(precision="fp16", max_batch=8, dla_core=0).batches() == (8, 8, 8)
    assert EngineOptions(precision="fp16", min_batch=1, opt_batch=4, max_batch=8, dla_core=1).batches() == (4, 4, 4)
    with pytest.raises(UserInputError, match="fixed batch"):
        EngineOptions(precision="fp16", opt_batch=16, max_batch=8, dla_core=0).batches()


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (EngineOptions(precision="fp32", dla_core=0), "DLA runs FP16 and INT8 only, not fp32"),  # review #10
        (EngineOptions(precision="fp8", dla_core=0), "DLA runs FP16 and INT8 only, not fp8"),
        (EngineOptions(precision="fp16", allow_gpu_fallback=True), "only applies with --dla-core"),  # review #17
        (EngineOptions(version_compatible=True, exclude_lean_runtime=True), "Runtime.load_runtime"),  # review #3
    ],
)
def test_option_sets_no_engine_can_honour_are_refused(opts: EngineOptions, needle: str) -> None:
    with pytest.raises(UserInputError, match=needle):
        check_options(None, opts)


def test_dla_layer_placement_is_read_from_the_build_log() -> None:
    """The builder's INFO lines for a DLA build (TensorRT 10.x wording, as trtexec prints them)."""
    log = [
        "---------- Layers Running on DLA ----------",
        "[DlaLayer] {ForeignNode[/model/encoder/layers.0/self_attn/q_proj/MatMul.../linear2/MatMul]}",
        "---------- Layers Running on GPU ----------",
        "[GpuLayer] SOFTMAX: /model/encoder/layers.0/self_attn/Softmax",
        "[GpuLayer] NORMALIZATION: /model/encoder/layers.0/norm1/LayerNormalization",
        "Total Activation Memory: 1048576 bytes",
    ]
    got = layer_placement(log)
    assert got["dla_layers"] == 1 and got["gpu_layers"] == 2
    assert got["on_gpu"] == [
        "SOFTMAX: /model/encoder/layers.0/self_attn/Softmax",
        "NORMALIZATION: /model/encoder/layers.0/norm1/LayerNormalization",
    ]
    assert layer_placement([]) == {"dla_layers": 0, "gpu_layers": 0, "on_gpu": [], "on_dla": []}


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "fp8"])
def test_rtx_builds_every_precision(graphs: dict[str, Path], tmp_path: Path, precision: str) -> None:
    api = load_trt("tensorrt-rtx")
    plan = tmp_path / f"engine.{precision}.plan"
    facts = build_engine(graphs[precision], plan, EngineOptions(precision=precision, max_batch=8, opt_batch=4), api=api)
    assert plan.stat().st_size == facts["plan_bytes"] > 10_000
    assert facts["strongly_typed"] and facts["build_flags"]["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert facts["tensorrt_version"] == api.version and facts["precision_used"] == precision
    # review #12/#15: the flavor (not only the import name) and the platform are recorded
    assert facts["tensorrt_flavor"] == "tensorrt-rtx" and facts["platform"] == this_platform()
    # review #13: TensorRT-RTX captures CUDA graphs only with user-allocated memory
    assert facts["build_flags"]["require_user_allocation"] is True
    # the recorded facts are what the runtime's compatibility check reads
    assert engine_mismatch(facts, gpu=("NVIDIA RTX 4090", (8, 9))) is None
    assert "compute capability 7.5, 8.0, 8.6, 8.9, 12.0, 12.1" in (
        engine_mismatch(facts, gpu=("NVIDIA H100", (9, 0))) or ""
    )
    assert "not portable across platforms" in (engine_mismatch(facts, platform_here="win32-amd64") or "")


@needs_rtx
def test_rtx_builder_options_and_timing_cache(graphs: dict[str, Path], tmp_path: Path) -> None:
    api = load_trt("tensorrt-rtx")
    cache = tmp_path / "timing.cache"
    opts = EngineOptions(
        precision="fp16",
        max_batch=4,
        workspace_mib=256,
        timing_cache=cache,
        builder_opt_level=2,
        hardware_compat="ampere-plus",
        compute_capabilities=["SM89"],
    )
    facts = build_engine(graphs["fp16"], tmp_path / "a.plan", opts, api=api)
    assert facts["build_flags"]["builder_optimization_level"] == 2
    assert facts["build_flags"]["timing_cache"].startswith("ignored")  # a no-op in TensorRT-RTX, said so
    assert not cache.exists()
    assert facts["hardware_compatibility_level"] == "ampere_plus" and not facts["version_compatible"]
    assert facts["build_flags"]["compute_capabilities"] == ["SM89"]
    assert engine_mismatch(facts, gpu=("NVIDIA RTX A6000", (8, 6))) is None  # ampere_plus: any Ampere+ RTX GPU
    targeted = build_engine(
        graphs["fp16"], tmp_path / "b.plan", EngineOptions(max_batch=4, compute_capabilities=["SM89"]), api=api
    )
    assert engine_mismatch(targeted, gpu=("NVIDIA RTX 4090", (8, 9))) is None
    assert "built for compute capability SM89" in (engine_mismatch(targeted, gpu=("NVIDIA RTX A6000", (8, 6))) or "")
    with pytest.raises(UserInputError, match=r"--dla-core 0 is not available: .* sees 0 DLA core\(s\)"):
        build_engine(
            graphs["fp16"], tmp_path / "c.plan", EngineOptions(precision="fp16", max_batch=4, dla_core=0), api=api
        )
    assert not (tmp_path / "c.plan").exists()


@needs_rtx
def test_rtx_reports_parser_errors_on_ort_only_graph(tiny_bundle: Path, tmp_path: Path) -> None:
    fused = tmp_path / "model.ort.onnx"
    optimize_for_ort(tiny_bundle / "model.onnx", None, fused, "fp32", num_heads=4, hidden_size=32)
    with pytest.raises(
        EngineBuildError,
        match=r"cannot parse model\.ort\.onnx: node .*(EmbedLayerNormalization|SkipLayerNormalization)",
    ):
        build_engine(fused, tmp_path / "x.plan", EngineOptions(max_batch=2), api=load_trt("tensorrt-rtx"))
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="no TensorRT (the lent H100 has none)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_on_gpu(graphs: dict[str, Path], tmp_path: Path, precision: str) -> None:
    pytest.importorskip("tensorrt")  # a GPU without TensorRT (the lent H200) skips, as the runtime's tests do
    api = load_trt("tensorrt")
    opts = EngineOptions(precision=precision, max_batch=8, opt_batch=4, timing_cache=tmp_path / "t.cache")
    facts = build_engine(graphs[precision], tmp_path / "e.plan", opts, api=api)
    assert facts["gpu_name"] and facts["compute_capability"] and facts["strongly_typed"]
    assert (tmp_path / "t.cache").stat().st_size > 0
    engine = api.trt.Runtime(api.trt.Logger()).deserialize_cuda_engine((tmp_path / "e.plan").read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    # run the engine on the GPU (torch CUDA tensors as I/O buffers) and compare with onnxruntime FP32 on CPU
    import numpy as np
    import torch

    from muxdeploy.exporters.parity import run_groups
    from muxdeploy.runtimes.backends.onnxruntime import make_session

    groups = synthetic_set(Manifest.load(graphs["fp32"].parent), groups=6, seed=3).held_out_groups
    expected = run_groups(make_session(graphs["fp32"]), groups)
    context = engine.create_execution_context()
    x = torch.from_numpy(groups).cuda()
    y = torch.empty(expected.shape, dtype=torch.float32, device="cuda")
    context.set_input_shape("input_ids", tuple(x.shape))
    context.set_tensor_address("input_ids", x.data_ptr())
    context.set_tensor_address("logits", y.data_ptr())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # review #14: x was copied on the default stream
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    got = y.cpu().numpy()
    scale = float(np.abs(expected).max())
    tolerance = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.2}[precision] * max(scale, 1.0)
    assert float(np.abs(got - expected).max()) < tolerance
