"""Checkpoint I/O: ckpt.pt round trip, weights-only loading, reference directories, clear errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from reference_dirs import (
    make_reference_dir,
    reference_config,
    reference_state_dict,
    single_torch_thread,
    write_reference_dir,
)

from muxdeploy.checkpoint import CKPT_FORMAT, CKPT_VERSION, load_checkpoint, save_checkpoint
from muxdeploy.core.errors import UserInputError

SMALL_REF = {"num_instances": 2, "hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_torch_thread():
        yield


def _ids(n: int, length: int, vocab: int, groups: int = 3, pad: int = 0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (groups, n, length), generator=gen)
    ids[:, :, length - 3 :] = pad
    return ids


def _one_line_error(call) -> str:
    with pytest.raises(UserInputError) as info:
        call()
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---- ckpt.pt -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"muxing_variant": "random_ortho", "demuxing_variant": "mlp", "task": "token_classification"}],
    ids=["index-seq", "ortho-mlp-token"],
)
def test_ckpt_round_trip_gives_same_outputs(tmp_path: Path, overrides: dict) -> None:
    model = tiny_model(seed=3, **overrides)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, tokenizer_json='{"fake": 1}', labels=["a", "b", "c"], meta={"epochs": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left beside it
    ckpt = load_checkpoint(path)
    assert ckpt.config.to_dict() == model.config.to_dict()
    assert ckpt.labels == ["a", "b", "c"] and ckpt.tokenizer_json == '{"fake": 1}' and ckpt.meta == {"epochs": 2}
    assert not ckpt.model.training
    ids = _ids(4, 16, 1000)
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids), model(ids))
    # the file loads with plain torch.load(weights_only=True): nothing in it needs code
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CKPT_FORMAT and payload["version"] == CKPT_VERSION


def test_ckpt_seq_len_override(tiny_ckpt: Path) -> None:
    assert load_checkpoint(tiny_ckpt).config.seq_len == 16
    assert load_checkpoint(tiny_ckpt, seq_len=8).config.seq_len == 8
    msg = _one_line_error(lambda: load_checkpoint(tiny_ckpt, seq_len=500))
    assert "seq_len 500" in msg


def test_ckpt_task_mismatch(tiny_ckpt: Path) -> None:
    msg = _one_line_error(lambda: load_checkpoint(tiny_ckpt, task="retrieval"))
    assert "sequence_classification" in msg and "retrieval" in msg


class NeedsCode:
    """Unpickling this runs `_touch`: a weights-only load must refuse it before running anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


def test_pickle_that_needs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": CKPT_FORMAT, "version": 1, "payload": NeedsCode(marker)}, path)
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert "arbitrary code" in msg and "_touch" in msg and str(path) in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is text\n", bytes(range(256)) * 8, b"PK\x03\x04 truncated zip"],
    ids=["empty", "text", "random", "truncated-zip"],
)
def test_non_checkpoint_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert msg.startswith(f"{path} is not a PyTorch checkpoint"), msg
    assert "arbitrary code" not in msg


def test_plain_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert "not a PyTorch checkpoint" in msg


def test_torch_file_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    assert "not a muxdeploy checkpoint" in _one_line_error(lambda: load_checkpoint(path))


def test_missing_file_and_dir_without_config(tmp_path: Path) -> None:
    assert "not found" in _one_line_error(lambda: load_checkpoint(tmp_path / "nope.pt"))
    assert "without config.json" in _one_line_error(lambda: load_checkpoint(tmp_path))


def _resave(src: Path, dst: Path, edit) -> Path:
    payload = torch.load(src, weights_only=True)
    edit(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    dst.write_bytes(buf.getvalue())
    return dst


def test_future_ckpt_version_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    path = _resave(tiny_ckpt, tmp_path / "future.pt", lambda p: p.update(version=CKPT_VERSION + 1))
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert f"version {CKPT_VERSION + 1}" in msg and "upgrade" in msg


def test_shape_mismatch_names_the_parameter(tiny_ckpt: Path, tmp_path: Path) -> None:
    def shrink(p: dict) -> None:
        p["state_dict"]["head.out_proj.weight"] = torch.zeros(5, 32)

    path = _resave(tiny_ckpt, tmp_path / "bad.pt", shrink)
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert "head.out_proj.weight" in msg and "(5, 32)" in msg and "(3, 32)" in msg


def test_missing_parameter_is_named(tiny_ckpt: Path, tmp_path: Path) -> None:
    path = _resave(tiny_ckpt, tmp_path / "bad.pt", lambda p: p["state_dict"].pop("encoder.layers.1.norm2.bias"))
    assert "encoder.layers.1.norm2.bias" in _one_line_error(lambda: load_checkpoint(path))


def test_ckpt_without_instance_embedding_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    path = _resave(tiny_ckpt, tmp_path / "bad.pt", lambda p: p["state_dict"].pop("multiplexer.instance_embedding"))
    assert "instance_embedding" in _one_line_error(lambda: load_checkpoint(path))


def test_save_into_missing_directory(tmp_path: Path) -> None:
    msg = _one_line_error(lambda: save_checkpoint(tmp_path / "no" / "ckpt.pt", tiny_model()))
    assert "does not exist" in msg


# ---- reference directories ---------------------------------------------------------------------------------


def test_reference_dir_both_weight_formats_agree(tmp_path: Path) -> None:
    both, cfg, state = make_reference_dir(tmp_path / "both", seed=4, muxing="random_ortho", **SMALL_REF)
    only_bin = write_reference_dir(tmp_path / "bin", cfg, state, formats=("bin",))
    only_st = write_reference_dir(tmp_path / "st", cfg, state, formats=("safetensors",))
    ids = _ids(2, 10, cfg["vocab_size"], pad=1)
    outs = []
    for path in (both, only_bin, only_st):
        ckpt = load_checkpoint(path)
        assert ckpt.config.muxing_variant == "random_ortho" and ckpt.config.num_instances == 2
        assert ckpt.labels == ["LABEL_A", "LABEL_B", "LABEL_C"]
        assert ckpt.meta == {"format": "datamux"}
        with torch.no_grad():
            outs.append(ckpt.model(ids))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    # and the weights really came from the files: the instance embedding is the stored one
    loaded = load_checkpoint(only_bin).model.multiplexer.instance_embedding
    assert torch.equal(loaded, state["instance_embedding"])


def test_reference_dir_tokenizer_travels(tmp_path: Path) -> None:
    path, _, _ = make_reference_dir(tmp_path / "ref", **SMALL_REF)
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    assert load_checkpoint(path).tokenizer_json == '{"version": "1.0"}'


def test_reference_bin_that_needs_code_is_refused(tmp_path: Path) -> None:
    cfg = reference_config(**SMALL_REF)
    state = reference_state_dict(cfg)
    path = write_reference_dir(tmp_path / "ref", cfg, state, formats=())
    marker = tmp_path / "marker"
    torch.save({**state, "extra": NeedsCode(marker)}, path / "pytorch_model.bin")
    assert "arbitrary code" in _one_line_error(lambda: load_checkpoint(path))
    assert not marker.exists()


def test_reference_shape_mismatch(tmp_path: Path) -> None:
    cfg = reference_config(**SMALL_REF)
    state = reference_state_dict(cfg)
    path = write_reference_dir(tmp_path / "ref", {**cfg, "id2label": {"0": "x", "1": "y"}}, state, ("safetensors",))
    msg = _one_line_error(lambda: load_checkpoint(path))
    assert "head.out_proj." in msg and "the config implies" in msg  # 3 labels in the weights, 2 in config.json


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"muxing_variant": "fourier"}, "muxing_variant"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"num_instances": None}, "num_instances"),
    ],
)
def test_reference_config_errors(tmp_path: Path, edit: dict, expect: str) -> None:
    cfg = reference_config(**SMALL_REF)
    state = reference_state_dict(cfg)
    new = {k: v for k, v in {**cfg, **edit}.items() if v is not None}
    path = write_reference_dir(tmp_path / "ref", new, state, ("safetensors",))
    assert expect in _one_line_error(lambda: load_checkpoint(path))


def test_reference_dir_without_weights_or_with_bad_json(tmp_path: Path) -> None:
    path, _, _ = make_reference_dir(tmp_path / "ref", **SMALL_REF)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "config.json").write_text("{not json")
    assert "config.json" in _one_line_error(lambda: load_checkpoint(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(reference_config(**SMALL_REF)))
    assert "neither model.safetensors nor pytorch_model.bin" in _one_line_error(lambda: load_checkpoint(empty))


def test_reference_retrieval_has_no_task_labels(tmp_path: Path) -> None:
    """The retrieval head outputs vocabulary ids: the classifier's id2label must not travel with it."""
    path, cfg, _ = make_reference_dir(tmp_path / "ref", demuxing="mlp", **SMALL_REF)
    assert load_checkpoint(path).labels == ["LABEL_A", "LABEL_B", "LABEL_C"]
    ckpt = load_checkpoint(path, task="retrieval")
    assert ckpt.labels is None and ckpt.config.output_dim == cfg["vocab_size"]


def test_reference_head_of_another_task_is_refused(tmp_path: Path) -> None:
    """A sequence-classification dir has no token-classification head: a one-line error, not a crash."""
    path, _, _ = make_reference_dir(tmp_path / "ref", **SMALL_REF)
    msg = _one_line_error(lambda: load_checkpoint(path, task="token_classification"))
    assert "lacks" in msg and "head." in msg


def test_model_dir_round_trip_fp16_weights_and_provenance(tmp_path):
    """A model directory (the shipped demo models' format) loads back as the fp16-rounded model, with its files."""
    from muxdeploy.checkpoint import save_model_dir

    model = tiny_model(num_instances=2)
    target = tmp_path / "m"
    save_model_dir(target, model, '{"tok": 1}', ["neg", "pos"], {"held_out_accuracy": 0.5})
    loaded = load_checkpoint(target)
    ids = _ids(2, model.config.seq_len, model.config.vocab_size)
    with torch.no_grad():
        rounded = model.half().float()(ids)
        assert torch.equal(loaded.model(ids), rounded)
    assert loaded.labels == ["neg", "pos"] and loaded.tokenizer_json == '{"tok": 1}'
    assert loaded.meta["provenance"] == {"held_out_accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp directory left beside it
    (target / "tokenizer.json").unlink()
    assert "without tokenizer.json" in _one_line_error(lambda: load_checkpoint(target))
