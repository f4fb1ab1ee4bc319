"""Benchmark: predict-style packing of many short instances, backend excluded (target >= 1M instances/s on one core).

Runs MuxRuntime.predict on a bundle manifest (N, L, labels) with a null backend that returns zeros,
so the time is the runtime's own: validate + pad (encode), group (pack), batch loop, unpack, and one
result dict per instance (format). The null backend's share is measured and subtracted.

    PYTHONPATH=. python bench/pack_throughput.py              # 1,000,000 instances, N=10, L=16
    PYTHONPATH=. python bench/pack_throughput.py --count 200000 --n 4

Reports wall time and CPU time (process_time: what one core actually spent, robust to a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.manifest import MANIFEST_NAME, Manifest
from muxdeploy.runtimes.backends.base import Backend, TensorSpec
from muxdeploy.runtimes.packing import default_filler, encode_token_instances, pack_groups, unpack_groups
from muxdeploy.runtimes.results import format_outputs, gc_paused
from muxdeploy.runtimes.runtime import MuxRuntime


class NullBackend(Backend):
    """Returns zeros of the output shape: the backend excluded from the measurement."""

    name = "null"

    def _activate_impl(self) -> None:
        pass

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        return np.zeros((feed.shape[0], *self.output_spec.shape), dtype=np.float32)

    def _deactivate_impl(self) -> None:
        pass


def write_manifest(root: Path, n: int, seq_len: int, vocab: int, max_batch: int, labels: list[str]) -> Path:
    """A classification bundle manifest (no model file: the null backend needs none)."""
    data = {
        "schema": 1,
        "model": {"kind": "transformer", "task": "sequence_classification"},
        "num_instances": n,
        "seq_len": seq_len,
        "max_batch": max_batch,
        "vocab_size": vocab,
        "pad_token_id": 0,
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": ["B", n, seq_len]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["B", n, len(labels)]}],
        "filler": default_filler(seq_len, 0).tolist(),
        "labels": labels,
        "artifacts": {},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    return root


def make_instances(count: int, max_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Python lists of ints (what an application hands over), lengths uniform in 1..max_len."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=count)
    flat = rng.integers(5, vocab, size=int(lengths.sum())).tolist()
    ends = np.cumsum(lengths).tolist()
    return [flat[e - k : e] for e, k in zip(ends, lengths.tolist(), strict=True)]


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """(fn(*args), wall seconds, cpu seconds)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def stage_cpu(instances: list[list[int]], manifest: Manifest, labels: list[str]) -> dict[str, float]:
    """CPU seconds of each stage called directly (GC paused, as predict does)."""
    filler, n, length = manifest.filler, manifest.num_instances, manifest.seq_len
    with gc_paused():
        enc, _, c_enc = timed(encode_token_instances, instances, length, 0, manifest.vocab_size, False, filler)
        groups, _, c_pack = timed(pack_groups, enc.ids, n, filler)
        zeros = np.zeros((groups.shape[0], n, len(labels)), dtype=np.float32)
        flat, _, c_unpack = timed(unpack_groups, zeros, len(instances))
        out, _, c_fmt = timed(format_outputs, "sequence_classification", flat, enc.lengths, labels)
        del out
    return {"encode_cpu": c_enc, "pack_cpu": c_pack, "unpack_format_cpu": c_unpack + c_fmt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=8, help="instances are 1..max-len tokens long")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    vocab, labels = 30522, ["neg", "pos"]
    instances = make_instances(args.count, args.max_len, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_manifest(Path(tmp), args.n, args.seq_len, vocab, args.max_batch, labels)
        manifest = Manifest.load(bundle)
        spec_in = TensorSpec.from_manifest(manifest.data["inputs"][0])
        spec_out = TensorSpec.from_manifest(manifest.data["outputs"][0])
        with MuxRuntime(bundle, backend=lambda: NullBackend(spec_in, spec_out, args.max_batch)) as rt:
            best: dict[str, float] = {}
            for _ in range(args.repeats):
                before = rt.metrics()["nv_inference_compute_infer_duration_us"]
                results, wall, cpu = timed(rt.predict, instances)
                null_s = (rt.metrics()["nv_inference_compute_infer_duration_us"] - before) / 1e6
                assert len(results) == args.count and results[-1]["label"] == "neg"
                del results
                for key, value in (("predict_wall", wall - null_s), ("predict_cpu", cpu - null_s), ("null", null_s)):
                    best[key] = min(best.get(key, value), value)
                for key, value in stage_cpu(instances, manifest, labels).items():
                    best[key] = min(best.get(key, value), value)
    rate_wall, rate_cpu = args.count / best["predict_wall"], args.count / best["predict_cpu"]
    print(
        f"predict packing, {args.count:,} instances of 1..{args.max_len} tokens, N={args.n}, L={args.seq_len}, "
        f"batch {args.max_batch} groups; best of {args.repeats}; null backend excluded ({best['null']:.3f}s)"
    )
    print(f"  wall {best['predict_wall']:.3f}s  -> {rate_wall / 1e6:.2f}M instances/s")
    print(f"  cpu  {best['predict_cpu']:.3f}s  -> {rate_cpu / 1e6:.2f}M instances/s per core")
    print(
        f"  stages (cpu): encode {best['encode_cpu']:.3f}s, pack {best['pack_cpu']:.4f}s, "
        f"unpack+format {best['unpack_format_cpu']:.3f}s"
    )
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("PASS" if rate_cpu >= 1e6 else "BELOW TARGET", "(target >= 1M instances/s on one core)")


if __name__ == "__main__":
    main()
