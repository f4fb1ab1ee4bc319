"""CPU throughput of onnxruntime FP32 vs INT8 (Q/DQ), portable and fused, for the tiny and small presets at N=1, 10.

For each preset (tiny: 2 layers width 64; small: 4 layers width 256; random weights, speed does not
depend on them) and each N, exports the model (muxdeploy.evaluation.benchmark.export_preset_bundle: ckpt.pt ->
parity-checked bundle), quantizes it with `muxdeploy.calibration.int8.quantize_int8`
(onnxruntime quantize_static, QDQ, symmetric per-channel; mux/demux kept in float) from random
calibration groups, and measures instances/s of a raw onnxruntime CPU session on packed batches of
--instances instances (G = ceil(instances / N) groups): warm-up, then repeats of back-to-back runs
over 4 rotating random input sets, median step time. Reports INT8/FP32 and N10/N1 ratios and the
max |logit| difference INT8 vs FP32 on one batch (a sanity check, not task accuracy). Also times the
onnxruntime-only fused graphs (`build-engine --backend onnxruntime`: fp32-ort, int8-ort) and reports each
against the portable FP32 graph (`over_portable_fp32` in the summary).

    PYTHONPATH=. python bench/cpu_sweep.py                    # tiny and small, N = 1 10
    PYTHONPATH=. python bench/cpu_sweep.py --presets tiny --n 1,2,10 --seconds 2
Writes $OUT/cpu_sweep.json (or bench/out/cpu_sweep.json) and prints a table. A quantization or INT8 run that
fails is recorded as that row's error, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_SETS = 4


def kernel_profile(path: Path, threads: int, sets: list[np.ndarray], runs: int = 5) -> dict[str, Any]:
    """onnxruntime's own profiler: summed kernel time per run and the top operator types (insensitive to
    time spent waiting for a core, unlike wall-clock time on a shared machine)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / "ort_profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for i in range(runs):
        sess.run(None, {name: sets[i % len(sets)]})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3 / runs
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return {
        "kernel_ms_per_run": round(total, 3),
        "top_ops": [{"op": k, "ms": round(v, 3), "pct": round(100 * v / total, 1)} for k, v in top],
    }


def measure(sess: Any, sets: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """Median step time over repeats of back-to-back runs, rotating input sets; also the process CPU time per
    step (all threads), which on a shared machine measures the work done rather than the wait for a core."""
    name = sess.get_inputs()[0].name
    for s in sets[:2]:
        sess.run(None, {name: s})
    t0 = time.perf_counter()
    sess.run(None, {name: sets[2 % len(sets)]})
    probe = time.perf_counter() - t0
    per_rep = max(1, int(0.25 / max(probe, 1e-6)))
    reps = max(3, min(20, int(seconds / max(per_rep * probe, 1e-6))))
    times, cpu = [], []
    for r in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(per_rep):
            sess.run(None, {name: sets[(r * per_rep + i) % len(sets)]})
        times.append((time.perf_counter() - t0) / per_rep)
        cpu.append((time.process_time() - c0) / per_rep)
    times.sort()
    return {
        "step_ms": statistics.median(times) * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
        "min_ms": times[0] * 1e3,
        "max_ms": times[-1] * 1e3,
        "runs_per_repeat": per_rep,
        "repeats": reps,
    }


def fused_rows(bundle: Path, row: dict[str, Any], sets: list[np.ndarray], cfg: Any, started: float) -> list[dict]:
    """The onnxruntime-only fused graphs `build-engine --backend onnxruntime` writes (fp32-ort from model.onnx,
    int8-ort from the Q/DQ graph when it exists), timed like the portable ones."""
    from muxdeploy.core.manifest import Manifest, onnx_name, ort_onnx_name
    from muxdeploy.exporters.ort_optimize import optimize_for_ort
    from muxdeploy.runtimes.backends.onnxruntime import make_session

    cfg_model = Manifest.load(bundle).data["model"]["config"]
    heads, hidden = int(cfg_model["num_attention_heads"]), int(cfg_model["hidden_size"])
    rows = []
    for precision in ("fp32", "int8"):
        typed = bundle / onnx_name(precision)
        if not typed.is_file():
            continue
        label = f"{precision}-ort"
        try:
            dst = bundle / ort_onnx_name(precision)
            facts = optimize_for_ort(bundle / onnx_name("fp32"), typed, dst, precision, heads, hidden)
            res = measure(make_session(dst, intra_op_threads=cfg.threads), sets, cfg.seconds)
            ips = cfg.instances / res["step_ms"] * 1e3
            rows.append({**row, "precision": label, **res, "instances_per_s": ips, "fused": facts["fused"]})
            print(f"[{time.perf_counter() - started:6.1f}s] {row['preset']:<5} N={row['n']:<3} {label} {ips:10,.0f} "
                  f"inst/s ({res['step_ms']:.2f} ms/step)", flush=True)  # fmt: skip
        except Exception as exc:  # record and continue the sweep
            rows.append({**row, "precision": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


def random_groups(g: int, n: int, seq_len: int, vocab: int, seed: int) -> np.ndarray:
    """Random ids in [1000, vocab) (never pad or special ids), lengths L/2..L padded with 0 as the runtime pads."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(g, n, seq_len))
    lengths = rng.integers(max(1, seq_len // 2), seq_len + 1, size=(g, n))
    ids[np.arange(seq_len)[None, None, :] >= lengths[..., None]] = 0
    return ids.astype(np.int32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--n", default="1,10")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--instances", type=int, default=80, help="instances per step (G = ceil(instances / N))")
    p.add_argument("--seconds", type=float, default=3.0, help="measurement budget per configuration")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--calib-groups", type=int, default=16)
    p.add_argument("--profile", action="store_true", help="also record onnxruntime's kernel-time profile")
    p.add_argument("--out", default=None)
    cfg = p.parse_args(argv)
    presets = [x for x in cfg.presets.split(",") if x]
    ns = [int(x) for x in cfg.n.split(",") if x]
    out_path = Path(cfg.out) if cfg.out else (Path(os.environ.get("OUT") or REPO / "bench" / "out") / "cpu_sweep.json")

    import onnxruntime as ort

    from muxdeploy.calibration.int8 import quantize_int8
    from muxdeploy.core.manifest import Manifest, onnx_name
    from muxdeploy.evaluation.benchmark import export_preset_bundle
    from muxdeploy.runtimes.backends.onnxruntime import make_session

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["cpu_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "threads": cfg.threads,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "seq_len": cfg.seq_len,
        "instances_per_step": cfg.instances,
        "int8": "muxdeploy.calibration.int8.quantize_int8 (defaults)",
    }
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cpu-sweep-") as tmp:
        for preset in presets:
            for n in ns:
                g = -(-cfg.instances // n)
                t0 = time.perf_counter()
                bundle = export_preset_bundle(
                    preset, n, cfg.seq_len, max(g, cfg.calib_groups), Path(tmp) / f"{preset}{n}"
                )
                export_s = time.perf_counter() - t0
                vocab = Manifest.load(bundle).vocab_size or 30522
                sets = [random_groups(g, n, cfg.seq_len, vocab, seed=s) for s in range(NUM_SETS)]
                fp32_path, int8_path = bundle / onnx_name("fp32"), bundle / onnx_name("int8")
                fp32 = make_session(fp32_path, intra_op_threads=cfg.threads)
                row = {
                    "preset": preset,
                    "n": n,
                    "groups": g,
                    "instances": cfg.instances,
                    "export_s": round(export_s, 1),
                }
                res = measure(fp32, sets, cfg.seconds)
                if cfg.profile:
                    res["profile"] = kernel_profile(fp32_path, cfg.threads, sets)
                results.append(
                    {**row, "precision": "fp32", **res, "instances_per_s": cfg.instances / res["step_ms"] * 1e3}
                )
                ips = results[-1]["instances_per_s"]
                elapsed = time.perf_counter() - started
                print(f"[{elapsed:6.1f}s] {preset:<5} N={n:<3} fp32 {ips:10,.0f} inst/s ({res['step_ms']:.2f} ms/step)")
                try:
                    t0 = time.perf_counter()
                    calib = random_groups(cfg.calib_groups, n, cfg.seq_len, vocab, seed=99)
                    settings = quantize_int8(fp32_path, int8_path, calib)
                    quant_s = time.perf_counter() - t0
                    int8 = make_session(int8_path, intra_op_threads=cfg.threads)
                    name = int8.get_inputs()[0].name
                    diff = float(
                        np.max(np.abs(int8.run(None, {name: sets[0]})[0] - fp32.run(None, {name: sets[0]})[0]))
                    )
                    res = measure(int8, sets, cfg.seconds)
                    if cfg.profile:
                        res["profile"] = kernel_profile(int8_path, cfg.threads, sets)
                    results.append({**row, "precision": "int8", **res, "quantize_s": round(quant_s, 1),
                                    "max_abs_diff_vs_fp32": diff, "settings": settings,
                                    "instances_per_s": cfg.instances / res["step_ms"] * 1e3})  # fmt: skip
                    print(f"[{time.perf_counter() - started:6.1f}s] {preset:<5} N={n:<3} int8 "
                          f"{results[-1]['instances_per_s']:10,.0f} inst/s ({res['step_ms']:.2f} ms/step, "
                          f"max|diff| {diff:.3g})", flush=True)  # fmt: skip
                except Exception as exc:  # record and continue the sweep
                    results.append({**row, "precision": "int8", "error": f"{type(exc).__name__}: {exc}"[:300]})
                results.extend(fused_rows(bundle, row, sets, cfg, started))
    meta["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    summary = summarize(results, presets, ns)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps({"meta": meta, "results": results, "summary": summary}, indent=2))
    os.replace(tmp_out, out_path)
    print_table(results, summary, presets, ns, meta)
    print(f"wrote {out_path}")
    return 0


def _ips(results: list[dict[str, Any]], preset: str, n: int, precision: str, key: str = "step_ms") -> float | None:
    """Instances/s from the median step time (key="step_ms") or the best repeat (key="min_ms")."""
    for r in results:
        if (r["preset"], r["n"], r["precision"]) == (preset, n, precision) and key in r:
            return r["instances"] / r[key] * 1e3
    return None


def summarize(results: list[dict[str, Any]], presets: list[str], ns: list[int]) -> dict[str, Any]:
    """INT8/FP32 per (preset, N) and N/N=1 per (preset, precision), from median step times and, under
    "best", from the fastest repeat (less sensitive to other processes on a shared machine)."""
    out: dict[str, Any] = {}
    for label, key in (("", "step_ms"), ("best_", "min_ms"), ("cpu_", "cpu_ms")):
        ratios: dict[str, Any] = {}
        speedups: dict[str, Any] = {}
        for preset in presets:
            for n in ns:
                a, b = _ips(results, preset, n, "int8", key), _ips(results, preset, n, "fp32", key)
                if a and b:
                    ratios.setdefault(preset, {})[str(n)] = round(a / b, 2)
            for precision in ("fp32", "int8"):
                base = _ips(results, preset, 1, precision, key)
                for n in ns:
                    v = _ips(results, preset, n, precision, key)
                    if v and base:
                        speedups.setdefault(preset, {}).setdefault(precision, {})[str(n)] = round(v / base, 2)
        out[f"{label}int8_over_fp32"] = ratios
        out[f"{label}vs_n1"] = speedups
        fused: dict[str, Any] = {}
        for preset in presets:
            for n in ns:
                base = _ips(results, preset, n, "fp32", key)
                for precision in ("fp32-ort", "int8", "int8-ort"):
                    v = _ips(results, preset, n, precision, key)
                    if v and base:
                        fused.setdefault(preset, {}).setdefault(str(n), {})[f"{precision}/fp32"] = round(v / base, 2)
        out[f"{label}over_portable_fp32"] = fused
    return out


def print_table(
    results: list[dict[str, Any]], summary: dict[str, Any], presets: list[str], ns: list[int], meta: dict[str, Any]
) -> None:
    print(f"\nCPU onnxruntime {meta['onnxruntime']}, {meta['threads']} threads on {meta['cpus']} CPUs "
          f"(load average {meta['load_average_at_start']}), L={meta['seq_len']}, "
          f"{meta['instances_per_step']} instances/step")  # fmt: skip
    print(f"{'preset':<7}{'N':>4}{'fp32 inst/s':>13}{'int8 inst/s':>13}{'int8/fp32':>11}", end="")
    print(f"{'fp32 vs N1':>12}{'int8 vs N1':>12}{'best i8/f32':>13}{'best f32 N1':>13}{'cpu i8/f32':>12}"
          f"{'cpu f32 N1':>12}")  # fmt: skip
    for preset in presets:
        for n in ns:
            f, i = _ips(results, preset, n, "fp32"), _ips(results, preset, n, "int8")
            ratio = summary["int8_over_fp32"].get(preset, {}).get(str(n))
            vf = summary["vs_n1"].get(preset, {}).get("fp32", {}).get(str(n))
            vi = summary["vs_n1"].get(preset, {}).get("int8", {}).get(str(n))
            best_ratio = summary["best_int8_over_fp32"].get(preset, {}).get(str(n))
            best_vf = summary["best_vs_n1"].get(preset, {}).get("fp32", {}).get(str(n))
            cpu_ratio = summary["cpu_int8_over_fp32"].get(preset, {}).get(str(n))
            cpu_vf = summary["cpu_vs_n1"].get(preset, {}).get("fp32", {}).get(str(n))

            def cell(v: float | None, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)

            print(f"{preset:<7}{n:>4}{cell(f, ',.0f'):>13}{cell(i, ',.0f'):>13}{cell(ratio, '.2f'):>11}"
                  f"{cell(vf, '.2f'):>12}{cell(vi, '.2f'):>12}{cell(best_ratio, '.2f'):>13}"
                  f"{cell(best_vf, '.2f'):>13}{cell(cpu_ratio, '.2f'):>12}{cell(cpu_vf, '.2f'):>12}")  # fmt: skip
    for r in results:
        if "profile" in r:
            top = ", ".join(f"{o['op']} {o['pct']}%" for o in r["profile"]["top_ops"][:4])
            print(f"profile {r['preset']} N={r['n']} {r['precision']}: {r['profile']['kernel_ms_per_run']:.1f} ms "
                  f"kernel time per step | {top}")  # fmt: skip
    for r in results:
        if "error" in r:
            print(f"note: {r['preset']} N={r['n']} {r['precision']}: {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
