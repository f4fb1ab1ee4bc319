"""Benchmark: MuxRuntime.predict vs a raw onnxruntime session on the same packed batches (overhead %).

Both run the same bundle's model.onnx on onnxruntime CPU with the same thread count; the raw side gets
the batches already packed (no validation, padding, grouping, unpacking or result objects), the
runtime side gets the instances as Python lists. Last, the host time of one `predict_array` call on an int32
id matrix of --array-rows rows with a backend that computes nothing (what the runtime adds to every GPU step).

    PYTHONPATH=. python bench/runtime_overhead.py                 # exports a tiny random bundle first
    PYTHONPATH=. python bench/runtime_overhead.py --bundle mux_model --count 50000
    PYTHONPATH=. python bench/runtime_overhead.py --n 40 --seq-len 128 --max-batch 32 --array-rows 1280
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from muxdeploy.core.manifest import REFERENCE_ONNX, Manifest
from muxdeploy.runtimes.backends import Backend, create, select
from muxdeploy.runtimes.backends.onnxruntime import make_session
from muxdeploy.runtimes.packing import encode_token_instances, iter_batches, pack_groups
from muxdeploy.runtimes.runtime import MuxRuntime


def tiny_bundle(root: Path, n: int, seq_len: int, max_batch: int) -> Path:
    """Export a random-weight tiny model (2 layers, width 32: the tests' tiny_config) to a bundle."""
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.models import MuxConfig, build_model

    config = MuxConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=seq_len + n + 8,
        pad_token_id=0,
        num_instances=n,
        seq_len=seq_len,
        num_labels=3,
        mux_prefix_filler_id=1,
        mux_cls_id=2,
        mux_slot_ids=[3 + i for i in range(n)],
    )
    model = build_model(config)
    model.init_weights(0)
    save_checkpoint(root / "ckpt.pt", model.eval(), labels=["neg", "neutral", "pos"])
    export_bundle(load_checkpoint(root / "ckpt.pt").export_spec(), n, root / "mux_model", max_batch=max_batch)
    return root / "mux_model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--array-rows", type=int, default=1280, help="rows per predict_array call (host-time probe)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp), args.n, args.seq_len, args.max_batch)
        manifest = Manifest.load(bundle)
        n, length, vocab = manifest.num_instances, manifest.seq_len, manifest.vocab_size or 1000
        rng = np.random.default_rng(0)
        instances = [rng.integers(5, vocab, size=int(rng.integers(1, length + 1))).tolist() for _ in range(args.count)]
        enc = encode_token_instances(instances, length, manifest.pad_token_id, vocab)
        batches = list(iter_batches(pack_groups(enc.ids, n, manifest.filler), args.max_batch))
        session = make_session(manifest.artifact_path(REFERENCE_ONNX), intra_op_threads=args.threads)
        name, out = manifest.input_name, manifest.output_name
        rt = MuxRuntime(bundle, backend="onnxruntime-cpu", max_batch=args.max_batch, intra_op_threads=args.threads)
        raw_t, rt_t, raw_c, rt_c = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
            t, c = time.perf_counter(), time.process_time()
            for b in batches:
                session.run([out], {name: b})
            raw_t.append(time.perf_counter() - t)
            raw_c.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            results = rt.predict(instances)
            rt_t.append(time.perf_counter() - t)
            rt_c.append(time.process_time() - c)
            assert len(results) == args.count
        submit_t = submit_throughput(rt, instances)
        t = time.perf_counter()
        for f in rt.submit_many(instances, timeout=60):
            f.result()
        bulk_t = time.perf_counter() - t
        rt.close()
        array_us = array_host_us(bundle, args.array_rows, args.max_batch)
    raw, ours, raw_cpu, ours_cpu = min(raw_t), min(rt_t), min(raw_c), min(rt_c)
    print(
        f"{args.count:,} instances, N={n}, L={length}, batches of {args.max_batch} groups, "
        f"onnxruntime CPU {args.threads} thread(s), best of {args.repeats} (wall / cpu)"
    )
    print(f"  raw session on pre-packed batches: {raw:.3f}s / {raw_cpu:.3f}s ({args.count / raw:,.0f} inst/s)")
    print(f"  MuxRuntime.predict (lists in, dicts): {ours:.3f}s / {ours_cpu:.3f}s ({args.count / ours:,.0f} inst/s)")
    print(f"  overhead: wall {100 * (ours - raw) / raw:+.1f}%, cpu {100 * (ours_cpu - raw_cpu) / raw_cpu:+.1f}%")
    print(f"  MuxRuntime.submit from 4 threads: {submit_t:.3f}s ({args.count / submit_t:,.0f} inst/s)")
    print(f"  MuxRuntime.submit_many from 1 thread: {bulk_t:.3f}s ({args.count / bulk_t:,.0f} inst/s)")
    print(f"  MuxRuntime.predict_array host time, {args.array_rows} int32 rows, null backend: {array_us:.1f} us/call")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


class NullBackend(Backend):
    """Returns zeros of the promised shape: what is left of a call is the runtime's own host work."""

    name = "null"

    def _activate_impl(self) -> None:
        pass

    def _deactivate_impl(self) -> None:
        pass

    def _infer_impl(self, feed: np.ndarray) -> np.ndarray:
        return np.zeros((feed.shape[0], *self.output_spec.shape), dtype=np.float32)


def array_host_us(bundle: Path, rows: int, max_batch: int, calls: int = 2000) -> float:
    """Median over 5 repeats of the microseconds one predict_array call of `rows` valid int32 rows takes on
    NullBackend (validation, packing, unpacking, metrics)."""
    manifest = Manifest.load(bundle)
    spec = create(select(manifest, "onnxruntime-cpu", "fp32"), manifest, max_batch)
    ids = np.random.default_rng(1).integers(5, manifest.vocab_size or 1000, size=(rows, manifest.seq_len))
    ids = ids.astype(np.int32)
    factory = lambda: NullBackend(spec.input_spec, spec.output_spec, max_batch)  # noqa: E731
    with MuxRuntime(bundle, backend=factory, max_batch=max_batch) as rt:
        for _ in range(50):
            rt.predict_array(ids)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(calls):
                rt.predict_array(ids)
            times.append((time.perf_counter() - t) / calls * 1e6)
    return sorted(times)[2]


def submit_throughput(rt: MuxRuntime, instances: list[list[int]]) -> float:
    """Seconds to submit every instance from 4 producer threads and collect every result."""
    futures: list = [None] * len(instances)

    def produce(k: int) -> None:
        for i in range(k, len(instances), 4):
            futures[i] = rt.submit(instances[i])

    t = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for f in futures:
        f.result()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
