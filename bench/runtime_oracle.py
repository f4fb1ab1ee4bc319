"""The full packing oracle: 100,000 instances submitted from 16 threads to a trained retrieval bundle.

Every future must come back with its own instance's tokens (cut to L): none swapped, lost or shifted.
The tiny model is ~99.9% accurate per token, so an answer may differ from its instance in at most one
position and >= 98% must be exact (a swap would scramble a whole answer).

    PYTHONPATH=. python bench/runtime_oracle.py                    # trains N=10, L=8 (3000 steps, 2-3 min), then runs
    PYTHONPATH=. python bench/runtime_oracle.py --n 4 --count 20000 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from muxdeploy.runtimes.runtime import MuxRuntime


def trained_bundle(root: Path, n: int, seq_len: int, seed: int, steps: int | None) -> Path:
    from muxdeploy.checkpoint import load_checkpoint, save_checkpoint
    from muxdeploy.exporters.onnx import export_bundle
    from muxdeploy.training import retrieval

    t = time.perf_counter()
    model = retrieval.train_tiny_retrieval(num_instances=n, seq_len=seq_len, seed=seed, steps=steps, progress=True)
    acc = retrieval.retrieval_accuracy(model)
    print(f"trained N={n} L={seq_len} retrieval model in {time.perf_counter() - t:.0f}s, token accuracy {acc:.4f}")
    save_checkpoint(root / "ckpt.pt", model)
    export_bundle(load_checkpoint(root / "ckpt.pt").export_spec(), n, root / "mux_model", max_batch=64)
    return root / "mux_model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="a trained retrieval bundle (default: train one)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--producers", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000, help="training steps (N=10 needs ~3000 to be an oracle)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or trained_bundle(Path(tmp), args.n, args.seq_len, args.seed, args.steps)
        with MuxRuntime(bundle, workers=args.workers, max_wait_ms=args.max_wait_ms) as rt:
            length = rt.manifest.seq_len
            low = max(3 + rt.num_instances, 3)  # content ids above pad, prefix filler, CLS and slot ids
            rng = np.random.default_rng(args.seed + 1)
            lengths = rng.integers(3, length + 3, size=args.count)  # some longer than L: truncated
            instances = [rng.integers(low, rt.manifest.vocab_size, size=int(k)).tolist() for k in lengths]
            futures: list = [None] * args.count

            def produce(k: int) -> None:
                for i in range(k, args.count, args.producers):
                    futures[i] = rt.submit(instances[i], timeout=60)

            t = time.perf_counter()
            threads = [threading.Thread(target=produce, args=(k,)) for k in range(args.producers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            answers = [f.result(timeout=120)["token_ids"] for f in futures]
            elapsed = time.perf_counter() - t
            metrics = rt.metrics()
            backend = rt.backend_name
    exact = slips = bad = 0
    for inst, got in zip(instances, answers, strict=True):
        want = np.asarray(inst[:length])
        wrong = int((got != want).sum()) if got.shape == want.shape else length
        exact += wrong == 0
        slips += wrong == 1
        bad += wrong > 1
    print(
        f"{args.count:,} instances from {args.producers} threads, {args.workers} worker(s), {backend}: "
        f"{elapsed:.1f}s ({args.count / elapsed:,.0f} inst/s)"
    )
    print(f"  exact {exact:,} ({100 * exact / args.count:.2f}%), one-token slips {slips:,}, wrong answers {bad:,}")
    print(
        f"  batches {metrics['nv_inference_exec_count']:,}, fill ratio {metrics['muxdeploy_batch_fill_ratio']:.3f}, "
        f"mean queue {metrics['nv_inference_queue_duration_us'] / args.count / 1000:.2f} ms"
    )
    ok = bad == 0 and exact >= 0.98 * args.count and metrics["nv_inference_request_success"] == args.count
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
