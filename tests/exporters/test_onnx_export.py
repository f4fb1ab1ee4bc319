"""ONNX export: onnxruntime matches PyTorch for every mux variant and every demux x task, the manifest says
what was written, B is dynamic, and a failed export leaves nothing half-written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_model
from reference_dirs import single_torch_thread

from muxdeploy.checkpoint import Checkpoint, load_checkpoint
from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.exporters.onnx import ExportResult, export_bundle
from muxdeploy.exporters.parity import ParityError

TOL = 1e-4

# Every muxing variant and every demux x task pair at least once (6 exports instead of 24).
CASES: dict[str, dict[str, Any]] = {
    "binary-index-token": {
        "muxing_variant": "binary_hadamard",
        "demuxing_variant": "index",
        "task": "token_classification",
        "num_instances": 3,
    },
    "ortho-index-retrieval": {
        "muxing_variant": "random_ortho",
        "demuxing_variant": "index",
        "task": "retrieval",
        "num_instances": 2,
        "seq_len": 8,
    },
    "lowrank-mlp-sequence": {
        "muxing_variant": "random_ortho_low_rank",
        "demuxing_variant": "mlp",
        "task": "sequence_classification",
        "num_instances": 4,
    },
    "gaussian-mlp-token": {
        "muxing_variant": "gaussian_hadamard",
        "demuxing_variant": "mlp",
        "task": "token_classification",
        "num_instances": 2,
        "seq_len": 12,
    },
    "binary-mlp-retrieval": {
        "muxing_variant": "binary_hadamard",
        "demuxing_variant": "mlp",
        "task": "retrieval",
        "num_instances": 3,
        "seq_len": 8,
    },
}
# gaussian_hadamard / index / sequence_classification is the shared `tiny_bundle` fixture.
ALL_CASES = ["gaussian-index-sequence", *CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, tiny_ckpt: Path):
    """case -> (bundle dir, eval-mode PyTorch model); each export runs once per module, on first use."""
    cache: dict[str, tuple[Path, torch.nn.Module]] = {
        "gaussian-index-sequence": (tiny_bundle, load_checkpoint(tiny_ckpt).model),
    }

    def get(case: str) -> tuple[Path, torch.nn.Module]:
        if case not in cache:
            model = tiny_model(seed=len(cache), **CASES[case])
            out = tmp_path_factory.mktemp(case) / "mux_model"
            spec = Checkpoint(model.config, model, labels=None, source=f"test:{case}").export_spec()
            result = export_bundle(spec, model.config.num_instances, out, max_batch=8)
            assert isinstance(result, ExportResult) and result.bundle == out
            cache[case] = (out, model)
        return cache[case]

    return get


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _groups(batch: int, n: int, length: int, vocab: int, pad: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, n, length))
    lengths = rng.integers(1, length + 1, size=(batch, n))
    ids[np.arange(length)[None, None, :] >= lengths[..., None]] = pad
    return ids.astype(np.int32)


@pytest.mark.parametrize("case", ALL_CASES)
def test_onnxruntime_matches_pytorch_at_any_batch(exported, case: str) -> None:
    bundle, model = exported(case)
    cfg = model.config
    session = _session(bundle / "model.onnx")
    for batch in (1, 5):  # 5 is none of the batch sizes the export itself checked (1, 3, 8)
        feed = _groups(batch, cfg.num_instances, cfg.seq_len, cfg.vocab_size, cfg.pad_token_id, seed=batch)
        got = session.run(None, {"input_ids": feed})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(feed)).numpy()
        c = cfg.vocab_size if cfg.task == "retrieval" else cfg.num_labels
        if cfg.task == "sequence_classification":
            assert got.shape == (batch, cfg.num_instances, c)
        else:  # token tasks: [B, N, L, C], the index prefix dropped
            assert got.shape == (batch, cfg.num_instances, cfg.seq_len, c)
        assert got.dtype == np.float32
        err = float(np.max(np.abs(got - want)))
        assert err <= TOL, f"{case} B={batch}: max abs err {err:.3g}"


@pytest.mark.parametrize("case", ALL_CASES)
def test_manifest_describes_the_bundle(exported, case: str) -> None:
    bundle, model = exported(case)
    cfg = model.config
    raw = json.loads((bundle / "muxdeploy.json").read_text())
    manifest = Manifest.load(bundle)
    assert raw["schema"] == 1
    assert manifest.num_instances == cfg.num_instances and manifest.seq_len == cfg.seq_len
    assert manifest.task == cfg.task and manifest.max_batch == 8
    assert manifest.pad_token_id == cfg.pad_token_id and manifest.vocab_size == cfg.vocab_size
    n, length = cfg.num_instances, cfg.seq_len
    assert raw["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": ["B", n, length]}]
    c = cfg.vocab_size if cfg.task == "retrieval" else cfg.num_labels
    shape = ["B", n, c] if cfg.task == "sequence_classification" else ["B", n, length, c]
    assert raw["outputs"] == [{"name": "logits", "dtype": "float32", "shape": shape}]
    assert manifest.filler.tolist() == [cfg.pad_token_id] * length and manifest.filler.dtype == np.int32
    assert raw["model"]["config"]["muxing_variant"] == cfg.muxing_variant
    assert raw["model"]["config"]["demuxing_variant"] == cfg.demuxing_variant
    if case == "gaussian-index-sequence":  # tiny_ckpt carries labels
        assert manifest.labels == ["neg", "neutral", "pos"]
    # artifacts: model.onnx with its real sha256
    art = raw["artifacts"]["model.onnx"]
    assert art["format"] == "onnx" and art["precision"] == "fp32" and art["opset"] == 18
    assert art["sha256"] == hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    assert manifest.verify_artifact("model.onnx") == bundle / "model.onnx"
    # the parity figure measured at export
    parity = raw["parity"]["export"]
    assert 0.0 <= parity["max_abs_diff"] <= TOL and parity["tolerance"] == TOL
    assert parity["groups"] >= 3
    # one self-contained file, nothing else in the bundle
    assert sorted(p.name for p in bundle.iterdir()) == ["model.onnx", "muxdeploy.json"]


@pytest.mark.parametrize("case", ["gaussian-index-sequence", "binary-index-token"])
def test_onnx_graph_signature(exported, case: str) -> None:
    bundle, model = exported(case)
    cfg = model.config
    graph = onnx.load(str(bundle / "model.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    (inp,) = graph.graph.input
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT32
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [cfg.num_instances, cfg.seq_len]
    (out,) = graph.graph.output
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _listing(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_failed_export_leaves_old_bundle_untouched(tiny_bundle: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    """Parity failure after the ONNX was written: no new file, no staging dir, the old bundle intact."""
    out = tmp_path / "mux_model"
    shutil.copytree(tiny_bundle, out)
    before = _listing(out)
    spec = load_checkpoint(tiny_ckpt).export_spec()
    with pytest.raises(ParityError) as info:
        export_bundle(spec, 4, out, max_batch=2, tolerance=-1.0)  # any diff fails
    assert "\n" not in str(info.value)
    assert _listing(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no .export-* / temp dirs either


def test_crash_while_writing_leaves_nothing(tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter dies half-way through writing the ONNX (disk full, kill): no bundle dir, no partial file."""
    import muxdeploy.exporters.onnx as onnx_exporter

    def half_write(model, path: Path, *args) -> None:
        path.write_bytes(b"\x08\x09partial onnx")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_exporter, "export_onnx", half_write)
    out = tmp_path / "new" / "mux_model"
    with pytest.raises(OSError):
        export_bundle(load_checkpoint(tiny_ckpt).export_spec(), 4, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.rglob("*")] == ["new"]  # (an intermediate parent may stay)


@pytest.mark.parametrize(
    "kwargs, expect",
    [
        ({"num_instances": 3}, "--n 3 does not match"),
        ({"opset": 30}, "--opset 30"),
        ({"seq_len": 10_000}, "--seq-len 10000"),
        ({"max_batch": 0}, "--max-batch"),
    ],
)
def test_bad_arguments_write_nothing(tiny_ckpt: Path, tmp_path: Path, kwargs: dict, expect: str) -> None:
    spec = load_checkpoint(tiny_ckpt).export_spec()
    out = tmp_path / "mux_model"
    args = {"num_instances": 4, **kwargs}
    with pytest.raises(UserInputError) as info:
        export_bundle(spec, args.pop("num_instances"), out, **args)
    assert expect in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_regular_file_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    spec = load_checkpoint(tiny_ckpt).export_spec()
    for out in (blocker / "out", blocker):
        with pytest.raises(UserInputError) as info:
            export_bundle(spec, 4, out)
        assert str(out) in str(info.value) and "-o" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"] and blocker.read_text() == "x"
