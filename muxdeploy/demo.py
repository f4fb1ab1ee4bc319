"""`muxdeploy demo --train`: train a tiny muxed sentiment model, export it to ONNX, compare PyTorch with the runtime.

The CLI is a thin layer over `run_demo`; tests drive the same function with small settings. Plain
`muxdeploy demo` runs the shipped trained models instead (`muxdeploy.demo_shipped`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError

Echo = Callable[[str], None]


@dataclass
class DemoReport:
    """What the demo measured and wrote."""

    num_instances: int
    seq_len: int
    dev_size: int
    torch_accuracy: float
    onnx_accuracy: float
    agreement: float
    majority_accuracy: float
    torch_instances_per_s: float
    onnx_instances_per_s: float
    train_seconds: float
    export_seconds: float
    total_seconds: float
    max_abs_diff: float
    reused_checkpoint: bool
    paths: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        """The result as a short aligned table."""
        rows = [
            ("", "PyTorch (muxed)", "muxdeploy runtime (ONNX, onnxruntime CPU)"),
            ("accuracy", f"{self.torch_accuracy:.2%}", f"{self.onnx_accuracy:.2%}"),
            ("majority class", f"{self.majority_accuracy:.2%}", f"{self.majority_accuracy:.2%}"),
            ("instances/s", f"{self.torch_instances_per_s:,.0f}", f"{self.onnx_instances_per_s:,.0f}"),
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"  {a:<{w0}}  {b:>{w1}}  {c:>40}" for a, b, c in rows]
        lines += [
            f"  agreement PyTorch vs ONNX: {self.agreement:.2%} of {self.dev_size} held-out sentences "
            f"(export parity max abs diff {self.max_abs_diff:.1e})",
            f"  N={self.num_instances} instances per pass, L={self.seq_len} tokens per instance",
            f"  time: train {self.train_seconds:.0f} s, export {self.export_seconds:.0f} s, "
            f"total {self.total_seconds:.0f} s",
        ]
        return "\n".join(lines)


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(result of the first call, best seconds of `repeats` calls)."""
    best, out = float("inf"), None
    for i in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        if i == 0:
            out = result
    return out, best


def run_demo(
    workdir: str | Path,
    num_instances: int = 10,
    epochs: float | None = None,
    steps: int | None = None,
    limit: int | None = None,
    reuse: bool = False,
    seed: int = 0,
    threads: int = 1,
    echo: Echo = print,
    progress: bool = True,
) -> DemoReport:
    """Train (or reuse) a tiny sentiment model at N, export it, and compare PyTorch and onnxruntime on the dev split."""
    import torch

    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.training import sentiment
    from muxdeploy.training.classifier import predict_classifier

    start = time.perf_counter()
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserInputError(f"--workdir {workdir} exists and is not a directory; choose another path")
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, bundle = workdir / "ckpt.pt", workdir / "mux_model"

    reused = reuse and ckpt_path.is_file()
    dev_texts: list[str]
    if reused:
        echo(f"reusing the cached checkpoint {ckpt_path} (no --reuse: train from scratch)")
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.config.num_instances != num_instances:
            raise UserInputError(
                f"{ckpt_path} was trained at N={ckpt.config.num_instances}, not --n {num_instances}; drop --reuse"
            )
        from muxdeploy.training.datasets import split_sentiment

        _, dev = split_sentiment(seed=0)
        if limit is not None:
            dev = dev[: max(1, limit // 4)]
        dev_texts, dev_labels = [t for t, _ in dev], [y for _, y in dev]
        train_seconds = 0.0
    else:
        echo(f"[1/3] training the tiny sentiment model at N={num_instances} (VADER movie-review snippets)")
        run = sentiment.train_sentiment(
            "tiny",
            num_instances,
            epochs=epochs,
            steps=steps,
            seed=seed,
            limit=limit,
            threads=threads,
            progress=progress,
        )
        save_checkpoint(
            ckpt_path,
            run.model,
            tokenizer_json=run.tokenizer_json,
            labels=sentiment.SENTIMENT_LABELS,
            meta={"task": "sentiment", "dev_accuracy": run.dev_accuracy, "seed": seed},
        )
        echo(
            f"      {run.result.steps} steps on {run.train_size} sentences in {run.result.seconds:.0f} s; "
            f"wrote {ckpt_path}"
        )
        dev_texts, dev_labels = run.dev_texts, run.dev_labels
        train_seconds = run.result.seconds
        ckpt = load_checkpoint(ckpt_path)

    echo(f"[2/3] exporting to ONNX (N={num_instances}, L={ckpt.config.seq_len}) and checking parity")
    t0 = time.perf_counter()
    result = export_bundle(ckpt.export_spec(), num_instances, bundle, max_batch=64)
    export_seconds = time.perf_counter() - t0
    echo(
        f"      parity max abs diff {result.max_abs_diff:.1e}; wrote {result.onnx_path}, {bundle / 'muxdeploy.json'}, "
        f"{bundle / 'tokenizer.json'}"
    )

    echo(f"[3/3] running {len(dev_texts)} held-out sentences through PyTorch and the muxdeploy runtime (exported ONNX)")
    from muxdeploy.training.tokenizer import tokenize_texts, tokenizer_from_json

    labels = np.asarray(dev_labels)
    tokenizer = tokenizer_from_json(ckpt.tokenizer_json or "")
    length = ckpt.config.seq_len

    def torch_path() -> np.ndarray:
        ids = tokenize_texts(tokenizer, dev_texts, length)
        return predict_classifier(ckpt.model, ids, threads=threads)

    from muxdeploy.runtimes.runtime import MuxRuntime

    runtime = MuxRuntime(bundle, backend="onnxruntime-cpu", precision="fp32", intra_op_threads=threads)

    def runtime_path() -> np.ndarray:
        # the deployed path: texts in, the bundle's tokenizer and packer, logits [M, C] in order
        return runtime.predict_array(dev_texts)

    repeats = 3 if len(dev_texts) >= 200 else 1  # best of 3: the machine may be shared
    with torch.inference_mode():
        torch_logits, torch_s = _timed(torch_path, repeats)
    with runtime:
        onnx_logits, onnx_s = _timed(runtime_path, repeats)
    torch_pred, onnx_pred = torch_logits.argmax(-1), onnx_logits.argmax(-1)
    m = len(dev_texts)
    report = DemoReport(
        num_instances=num_instances,
        seq_len=ckpt.config.seq_len,
        dev_size=m,
        torch_accuracy=float((torch_pred == labels).mean()),
        onnx_accuracy=float((onnx_pred == labels).mean()),
        agreement=float((torch_pred == onnx_pred).mean()),
        majority_accuracy=float(max(labels.mean(), 1 - labels.mean())),
        torch_instances_per_s=m / torch_s,
        onnx_instances_per_s=m / onnx_s,
        train_seconds=train_seconds,
        export_seconds=export_seconds,
        total_seconds=time.perf_counter() - start,
        max_abs_diff=result.max_abs_diff,
        reused_checkpoint=reused,
        paths={"checkpoint": ckpt_path, "bundle": bundle, "onnx": result.onnx_path},
    )
    return report
