"""MuxRuntime.predict on a real exported bundle (onnxruntime CPU) against the PyTorch model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import edit_manifest

from muxdeploy.checkpoint import load_checkpoint
from muxdeploy.core.errors import InstanceError, ManifestError, UserInputError
from muxdeploy.core.manifest import Manifest
from muxdeploy.runtimes.backends import TensorSpec
from muxdeploy.runtimes.backends.torch_ref import TorchBackend
from muxdeploy.runtimes.runtime import MuxRuntime

ROOT = Path(__file__).resolve().parents[2]
N, L, PAD = 4, 16, 0


def torch_reference(ckpt: Path, instances: list[list[int]]) -> np.ndarray:
    """Logits per instance computed without the packer: pad by hand, group in order, pad rows as fillers."""
    model = load_checkpoint(ckpt).model
    rows = [list(x[:L]) + [PAD] * (L - min(len(x), L)) for x in instances]
    while len(rows) % N:
        rows.append([PAD] * L)
    with torch.no_grad():
        out = model(torch.tensor(rows, dtype=torch.int32).reshape(-1, N, L)).numpy()
    return out.reshape(-1, *out.shape[2:])[: len(instances)]


def random_instances(count: int, seed: int = 0, low: int = 5, high: int = 1000, max_len: int = L) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(1, max_len + 1))).tolist() for _ in range(count)]


def logits(results: list[dict]) -> np.ndarray:
    return np.stack([r["logits"] for r in results])


def test_import_runtime_pulls_in_neither_torch_nor_onnx(tiny_bundle: Path) -> None:
    code = (
        "import sys, muxdeploy.runtimes, muxdeploy.runtimes.runtime, muxdeploy.runtimes.backends.onnxruntime, "
        "muxdeploy.runtimes.backends.tensorrt, muxdeploy.runtimes.backends.cuda_buffers\n"
        "from muxdeploy.runtimes import MuxRuntime\n"
        f"rt = MuxRuntime({str(tiny_bundle)!r}); rt.predict([[5, 6, 7]]); rt.submit([8, 9]).result(); rt.close()\n"
        "bad = sorted(m for m in ('torch', 'onnx', 'onnxscript', 'tensorrt') if m in sys.modules)\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout


def test_predict_matches_pytorch_in_order(tiny_bundle: Path, tiny_ckpt: Path) -> None:
    instances = random_instances(23)  # not a multiple of N: the last group holds fillers
    with MuxRuntime(tiny_bundle, max_batch=2) as rt:  # several batches, the last one short
        results = rt.predict(instances)
        assert rt.backend_name == "onnxruntime-cpu fp32 (model.onnx)"
    assert len(results) == 23
    expected = torch_reference(tiny_ckpt, instances)
    np.testing.assert_allclose(logits(results), expected, atol=1e-4)
    for r in results:
        assert r["label_id"] == int(np.argmax(r["logits"]))
        assert r["label"] == ["neg", "neutral", "pos"][r["label_id"]]
    # numpy 2-D input takes the fast path and gives the same answers
    same_len = [x[:3] + [7] * (3 - len(x[:3])) for x in instances]
    with MuxRuntime(tiny_bundle) as rt:
        a, b = rt.predict(np.array(same_len, dtype=np.int64)), rt.predict(same_len)
    np.testing.assert_allclose(logits(a), logits(b), atol=1e-6)


def test_predict_array_is_predict_without_the_dicts(tiny_bundle: Path, tiny_ckpt: Path) -> None:
    instances = random_instances(23, seed=4)
    with MuxRuntime(tiny_bundle, max_batch=2) as rt:  # several batches: outputs are concatenated in order
        got = rt.predict_array(instances)
        assert got.shape == (23, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, torch_reference(tiny_ckpt, instances), atol=1e-4)
        np.testing.assert_array_equal(got, logits(rt.predict(instances)))
        assert rt.predict_array(np.zeros((0, L), dtype=np.int32)).shape == (0, 3)
        with pytest.raises(InstanceError, match=r"instance 1: .*outside the vocabulary"):
            rt.predict_array([[5, 6], [5, 1000]])
        assert rt.metrics()["nv_inference_request_success"] == 23 + 23


def test_an_int32_id_matrix_runs_uncopied_and_untouched(tiny_bundle: Path, tiny_ckpt: Path) -> None:
    """predict/predict_array take a valid int32 [M, L] matrix without copying it (the host-side cost of a step):
    a read-only matrix runs (nothing writes into it) and gives the answer of a copied one, fillers included
    (M = 23 is not a multiple of N)."""
    rows = np.asarray([list(x[:L]) + [PAD] * (L - len(x[:L])) for x in random_instances(23, seed=8)], dtype=np.int32)
    frozen = rows.copy()
    frozen.flags.writeable = False
    with MuxRuntime(tiny_bundle, max_batch=2) as rt:
        assert rt.encoder.encode(frozen, copy=False).ids is frozen
        assert not np.shares_memory(rt.encoder.encode(frozen).ids, frozen)  # the default still copies
        got = rt.predict_array(frozen)
        np.testing.assert_array_equal(got, rt.predict_array(rows.astype(np.int64)))
        np.testing.assert_array_equal(logits(rt.predict(frozen)), got)
        with MuxRuntime(tiny_bundle, isolation="fillers") as alone:
            np.testing.assert_array_equal(alone.predict_array(frozen), alone.predict_array(rows.copy()))
    np.testing.assert_array_equal(frozen, rows)
    np.testing.assert_allclose(got, torch_reference(tiny_ckpt, rows.tolist()), atol=1e-4)


def test_predict_truncates_long_instances_and_strict_refuses(tiny_bundle: Path, tiny_ckpt: Path) -> None:
    long = list(range(5, 5 + L + 7))
    with MuxRuntime(tiny_bundle) as rt:
        got = rt.predict([long, [9, 9]])
    np.testing.assert_allclose(logits(got), torch_reference(tiny_ckpt, [long[:L], [9, 9]]), atol=1e-4)
    with MuxRuntime(tiny_bundle, strict=True) as rt:
        with pytest.raises(InstanceError, match=r"instance 1: has 23 tokens.*16"):
            rt.predict([[5], long])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1.5, 2.5], "dtype float64"),
        ([5, 1000], "outside the vocabulary"),
        ([5, -1], "outside the vocabulary"),
        ([], "empty"),
        ("some text", "text"),
        ([[5, 6]], "shape"),
    ],
)
def test_bad_instance_is_named_and_never_poisons_group_mates(tiny_bundle: Path, bad: object, message: str) -> None:
    good = random_instances(6, seed=3)
    mixed = [*good[:2], bad, *good[2:]]
    with MuxRuntime(tiny_bundle) as rt:
        with pytest.raises(InstanceError, match=message) as info:
            rt.predict(mixed)
        assert "instance 2" in str(info.value)
        answered = rt.predict(mixed, on_error="return")
        clean = rt.predict(good)
    assert isinstance(answered[2], InstanceError)
    kept = [r for i, r in enumerate(answered) if i != 2]
    np.testing.assert_allclose(logits(kept), logits(clean), atol=1e-6)


def test_torch_backend_agrees_with_onnxruntime(tiny_bundle: Path, tiny_ckpt: Path) -> None:
    manifest = Manifest.load(tiny_bundle)
    model = load_checkpoint(tiny_ckpt).model
    spec_in = TensorSpec.from_manifest(manifest.data["inputs"][0])
    spec_out = TensorSpec.from_manifest(manifest.data["outputs"][0])
    instances = random_instances(9, seed=5)
    with MuxRuntime(tiny_bundle, backend=lambda: TorchBackend(model, spec_in, spec_out, 8)) as rt:
        ref = rt.predict(instances)
        assert rt.backend_name == "torch"
    with MuxRuntime(tiny_bundle) as rt:
        got = rt.predict(instances)
    np.testing.assert_allclose(logits(got), logits(ref), atol=1e-4)


def test_metrics_use_triton_names(tiny_bundle: Path) -> None:
    with MuxRuntime(tiny_bundle) as rt:
        rt.predict(random_instances(5))
        m = rt.metrics()
    assert m["nv_inference_request_success"] == 5
    assert m["nv_inference_count"] == 5
    assert m["nv_inference_exec_count"] == 1
    assert m["muxdeploy_padded_slots"] == 3  # 5 instances in 2 groups of 4
    assert m["muxdeploy_batch_fill_ratio"] == pytest.approx(5 / 8)
    assert m["nv_inference_compute_infer_duration_us"] > 0


def test_newer_manifest_schema_is_a_clear_error(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, schema=99)
    with pytest.raises(ManifestError, match="schema 99, newer"):
        MuxRuntime(bundle_copy)


def test_changed_model_file_fails_its_sha256_check(bundle_copy: Path) -> None:
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match the sha256"):
        MuxRuntime(bundle_copy)


def test_bad_options_are_user_errors(tiny_bundle: Path) -> None:
    with pytest.raises(UserInputError, match="max_batch 99"):
        MuxRuntime(tiny_bundle, max_batch=99)
    with pytest.raises(UserInputError, match="unknown backend"):
        MuxRuntime(tiny_bundle, backend="tpu")
    with pytest.raises(UserInputError, match="has no fp16 ONNX artifact for onnxruntime-cpu"):
        MuxRuntime(tiny_bundle, backend="onnxruntime", precision="fp16")
    with pytest.raises(UserInputError, match="multiples of N=4"):
        MuxRuntime(tiny_bundle, preferred_batch_sizes=[6])


def test_results_are_json_serializable(tiny_bundle: Path) -> None:
    from muxdeploy.runtimes.results import to_jsonable

    with MuxRuntime(tiny_bundle) as rt:
        out = rt.predict([[5, 6], []], on_error="return")
    text = json.dumps([to_jsonable(r) for r in out])
    assert '"label": "' in text and '"error": "instance 1: is empty' in text


def add_tokenizer(bundle: Path) -> None:
    """Give a bundle copy a small BERT WordPiece tokenizer.json inside the tiny model's vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    vocab.update({w: 200 + i for i, w in enumerate("a fine film dull plot hello world".split())})
    tok = Tokenizer.from_str(BertWordPieceTokenizer(vocab=vocab, lowercase=True).to_str())
    tok.save(str(bundle / "tokenizer.json"))
    edit_manifest(bundle, tokenizer="tokenizer.json")


def test_texts_are_tokenized_with_cls_and_sep_as_trained(bundle_copy: Path) -> None:
    add_tokenizer(bundle_copy)
    long_text = " ".join(["fine"] * 30)
    with MuxRuntime(bundle_copy) as rt:
        by_text = rt.predict(["A fine film", "dull plot", long_text, "hello"])
        by_ids = rt.predict([[101, 200, 201, 202, 102], [101, 203, 204, 102], [101, *[201] * 14, 102], [101, 205, 102]])
    # the long text is truncated by the tokenizer and keeps its [SEP], as at training time
    np.testing.assert_allclose(logits(by_text), logits(by_ids), atol=1e-6)
    with MuxRuntime(bundle_copy, strict=True) as rt:
        with pytest.raises(InstanceError, match="instance 0: has 32 tokens"):
            rt.predict([long_text])
        mixed = rt.predict(["a film", [101, 201, 102]])
        assert len(mixed) == 2


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random tiny token-classification bundle (output [B, N, L, 5]) and its checkpoint."""
    from conftest import tiny_model

    from muxdeploy.checkpoint import save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    root = tmp_path_factory.mktemp("token")
    save_checkpoint(root / "ckpt.pt", tiny_model(task="token_classification", num_labels=5), labels=list("OBIES"))
    export_bundle(load_checkpoint(root / "ckpt.pt").export_spec(), N, root / "mux_model", max_batch=4)
    return root / "mux_model", root / "ckpt.pt"


def test_token_classification_is_cut_to_each_instance(token_bundle: tuple[Path, Path]) -> None:
    bundle, ckpt = token_bundle
    instances = random_instances(11, seed=9, max_len=L + 4)
    with MuxRuntime(bundle) as rt:
        results = rt.predict(instances)
    expected = torch_reference(ckpt, instances)  # [M, L, 5]
    for inst, got, want in zip(instances, results, expected, strict=True):
        k = min(len(inst), L)
        assert got["logits"].shape == (k, 5) and len(got["labels"]) == k
        np.testing.assert_allclose(got["logits"], want[:k], atol=1e-4)
        assert got["labels"] == ["OBIES"[i] for i in want[:k].argmax(-1)]
    with MuxRuntime(bundle) as rt:  # the array path is not cut to length: [M, L, C]
        np.testing.assert_allclose(rt.predict_array(instances), expected, atol=1e-4)
