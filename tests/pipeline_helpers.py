"""The whole deployment path of one checkpoint, driven through the CLI as a user runs it:
export -> build-engine --int8 --backend onnxruntime -> MuxRuntime at FP32 and INT8 -> validate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from muxdeploy.cli import main
from muxdeploy.runtimes.runtime import MuxRuntime


def cli(*args: str) -> str:
    """Run one muxdeploy command; assert it succeeded; return its output."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def labelled_ids(path: Path, count: int, vocab: int, token_labels: int | None, labels: int, seed: int = 0) -> Path:
    """JSONL of random instances with gold labels: one per instance, or one per token (`token_labels`)."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for _ in range(count):
            ids = rng.integers(5, vocab, size=int(rng.integers(3, 12))).tolist()
            if token_labels:
                row = {"input_ids": ids, "labels": rng.integers(0, token_labels, size=len(ids)).tolist()}
            else:
                row = {"input_ids": ids, "label": int(rng.integers(0, labels))}
            f.write(json.dumps(row) + "\n")
    return path


def deploy_and_check(
    checkpoint: Path, n: int, work: Path, vocab: int, labels: int, token_task: bool, export_args: tuple[str, ...] = ()
) -> None:
    """Drive the pipeline and check each stage against the one before it."""
    bundle = work / "mux_model"
    out = cli("export", str(checkpoint), "--n", str(n), "-o", str(bundle), *export_args)
    assert "parity" in out
    data = labelled_ids(work / "dev.jsonl", 48, vocab, labels if token_task else None, labels)
    int8 = ["--int8", "--calib-data", str(data), "--calib-size", "8", "--backend", "onnxruntime"]
    cli("build-engine", str(bundle), *int8, "--bench-seconds", "0.1")
    manifest = json.loads((bundle / "muxdeploy.json").read_text())
    assert "model.int8.onnx" in manifest["artifacts"]
    instances = [json.loads(line)["input_ids"] for line in data.read_text().splitlines()]
    outputs = {}
    for precision in ("fp32", "int8"):
        with MuxRuntime(bundle, backend="onnxruntime-cpu", precision=precision) as rt:
            assert f"onnxruntime-cpu {precision} (model" in rt.backend_name  # int8: build-engine's fused .ort graph
            results = rt.predict(instances)
            outputs[precision] = rt.predict_array(instances)
        assert len(results) == len(instances)
        if token_task:
            seq_len = manifest["seq_len"]
            assert [len(r["labels"]) for r in results] == [min(len(x), seq_len) for x in instances]
        else:
            np.testing.assert_array_equal(np.stack([r["logits"] for r in results]), outputs[precision])
    scale = float(np.abs(outputs["fp32"]).max())
    assert 0 < float(np.abs(outputs["int8"] - outputs["fp32"]).max()) < 0.25 * max(scale, 1.0)  # quantized, close
    for precision, tolerance in (("fp32", 1e-4), ("int8", 0.25 * max(scale, 1.0))):
        args = ["--data", str(data), "--precision", precision, "--backend", "onnxruntime-cpu", "--json"]
        report = json.loads(cli("validate", str(bundle), *args))
        assert report["instances"] == len(instances) and report["checkpoint"].endswith(checkpoint.name)
        assert report["max_abs_logit_diff"] < tolerance
        assert report["metric"] == ("token_accuracy" if token_task else "accuracy")
        assert len(report["slots"]) == n
