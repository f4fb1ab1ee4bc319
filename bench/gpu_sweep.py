"""GPU throughput sweep of one DataMUX architecture over N: PyTorch eager/CUDA graph, onnxruntime CUDA, our runtime.

For a BERT-base-sized DataMUX model (random weights; speed does not depend on them) at each N and at
each step size (instances per step), measures instances/s of:

  torch_eager      PyTorch fp16 on CUDA, torch.inference_mode, input [G, N, L] int32 already on the GPU
  torch_graph      the same forward captured once in a CUDA graph and replayed (input copied into its buffer)
  ort_unfused      onnxruntime CUDA EP on the exported ONNX converted to fp16 without fusions, I/O binding
  ort_fused        the same after onnxruntime.transformers' BERT fusions (optimize_model), I/O binding
  ort_fused_host   the fused session with numpy in/out (host copies included): the raw backend the runtime wraps
  runtime          muxdeploy.runtimes.runtime.MuxRuntime(bundle, backend="onnxruntime") on the fused fp16 graph,
                   predict() on [M, L] numpy instances (packing, host copies and unpacking included)
  runtime_array    the same MuxRuntime, predict_array(): raw outputs [M, C] instead of one dict per instance

G = ceil(instances / N) groups per step; instances/s counts real instances only. Timing: warm-up, then
repeats of k back-to-back steps (CUDA events for torch, synchronous Run + perf_counter for onnxruntime),
rotating over 4 input sets of random ids (never zeros); the median step time of the repeats is reported,
with p10/p90. ONNX export and fp16 conversion run in worker processes while the GPU measures PyTorch, and
are cached under --cache-dir (default /tmp/muxbench), so a second run skips them.

Run on a GPU machine from the repository root:
    PYTHONPATH=/tmp/site:. python bench/gpu_sweep.py            # full sweep, N = 1 2 5 10 20 40
    PYTHONPATH=/tmp/site:. python bench/gpu_sweep.py --quick    # N = 1 10, fewer repeats
    PYTHONPATH=. python bench/gpu_sweep.py --check              # CPU smoke run: tiny preset, no CUDA needed
Writes $OUT/gpu_sweep.json (or bench/out/gpu_sweep.json when OUT is unset) and prints a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BACKENDS = ("torch_eager", "torch_graph", "ort_unfused", "ort_fused", "ort_fused_host", "runtime", "runtime_array")
RUNTIMES = {"runtime": "predict", "runtime_array": "predict_array"}
NUM_INPUT_SETS = 4
SEED = 0
NUM_HEADS = {"tiny": 4, "small": 4, "base": 12}
HIDDEN = {"tiny": 64, "small": 256, "base": 768}


# ---------------------------------------------------------------------------------------------
# ONNX preparation (worker processes: CPU only, no CUDA)
# ---------------------------------------------------------------------------------------------
def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _exit_with_parent() -> None:
    """In a worker: exit when the parent process dies (a crashed parent must not leave exporters running)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def prepare_onnx(
    preset: str,
    n: int,
    seq_len: int,
    max_batch: int,
    cache_dir: str,
    threads: int,
    fused_fp32: bool = False,
    cores: list[int] | None = None,
) -> dict[str, Any]:
    """Export fp32 ONNX, write unfused and fused fp16 ONNX and a runtime bundle for one N; cached by key.

    `fused_fp32` also keeps the fused graph in fp32 (the --check mode runs it on CPU, where onnxruntime
    has no fused fp16 kernels).
    """
    _exit_with_parent()
    if cores:
        os.sched_setaffinity(0, cores)  # keep off the cores the GPU-driving process uses
    import torch

    torch.set_num_threads(threads)
    from muxdeploy.exporters.onnx import ExportSpec, build_manifest, export_onnx

    from muxdeploy.models import build_model
    from muxdeploy.models.presets import preset_config

    key = f"{preset}_n{n}_l{seq_len}_b{max_batch}_s{SEED}"
    root = Path(cache_dir) / key
    done = root / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        info["cached"] = True
        return info
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"key": key, "n": n, "cached": False}
    config = preset_config(preset, n, seq_len=seq_len)
    model = build_model(config)
    model.init_weights(SEED)
    model.eval()

    t0 = time.perf_counter()
    fp32 = root / "model.onnx"
    tmp = root / "model.onnx.tmp"
    export_onnx(model, tmp, n, seq_len, max_batch, 18)
    _replace(tmp, fp32)
    info["export_s"] = round(time.perf_counter() - t0, 2)

    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.onnx_model import OnnxModel

    t0 = time.perf_counter()
    unfused = OnnxModel(onnx.load(str(fp32)))
    unfused.convert_float_to_float16(keep_io_types=True)
    tmp = root / "model.fp16.unfused.onnx.tmp"
    unfused.save_model_to_file(str(tmp))
    _replace(tmp, root / "model.fp16.unfused.onnx")
    info["fp16_unfused_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    fused = optimizer.optimize_model(
        str(fp32), model_type="bert", num_heads=NUM_HEADS[preset], hidden_size=HIDDEN[preset], opt_level=0
    )
    info["fusions"] = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    if fused_fp32:
        tmp = root / "model.fp32.fused.onnx.tmp"
        fused.save_model_to_file(str(tmp))
        _replace(tmp, root / "model.fp32.fused.onnx")
    fused.convert_float_to_float16(keep_io_types=True)
    tmp = root / "model.fp16.fused.onnx.tmp"
    fused.save_model_to_file(str(tmp))
    _replace(tmp, root / "model.fp16.fused.onnx")
    info["fp16_fused_s"] = round(time.perf_counter() - t0, 2)

    # A runtime bundle: the fp32 graph as exported plus the fused fp16 graph as the fp16 artifact
    # (--check: the fused fp32 graph as model.onnx and no fp16 artifact, since the CPU cannot run fused fp16).
    t0 = time.perf_counter()
    bundle = root / "bundle"
    bundle.mkdir(exist_ok=True)
    _link_or_copy(root / "model.fp32.fused.onnx" if fused_fp32 else fp32, bundle / "model.onnx")
    if not fused_fp32:
        _link_or_copy(root / "model.fp16.fused.onnx", bundle / "model.fp16.onnx")
    c = config
    spec = ExportSpec(
        model=model,
        task=c.task,
        num_instances=n,
        seq_len=seq_len,
        max_seq_len=c.max_position_embeddings - c.prefix_len - c.pad_token_id - 1,
        vocab_size=c.vocab_size,
        pad_token_id=c.pad_token_id,
        output_dim=c.output_dim,
        config=c.to_dict(),
        source=f"random weights: preset {preset} seed {SEED} (benchmark)",
    )
    manifest = build_manifest(spec, seq_len, max_batch, 18, 0.0, [])
    manifest.data["parity"] = {"note": "benchmark bundle of random weights; parity not measured"}
    manifest.bundle = bundle
    manifest.add_artifact("model.onnx", "onnx", "fp32", opset=18, role="reference")
    if not fused_fp32:
        manifest.add_artifact("model.fp16.onnx", "onnx", "fp16", opset=18, fused="onnxruntime.transformers bert")
    manifest.save(bundle)
    info["bundle_s"] = round(time.perf_counter() - t0, 2)

    info["files"] = {
        "fp32": str(fp32),
        "fp16_unfused": str(root / "model.fp16.unfused.onnx"),
        "fp16_fused": str(root / "model.fp16.fused.onnx"),
        "fp32_fused": str(root / "model.fp32.fused.onnx") if fused_fp32 else None,
        "bundle": str(bundle),
    }
    info["sizes_mb"] = {
        k: round(Path(v).stat().st_size / 2**20, 1) for k, v in info["files"].items() if v and k != "bundle"
    }
    tmp = root / "done.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    _replace(tmp, done)
    return info


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
class Timer:
    """Times k back-to-back steps: CUDA events on torch's stream, or perf_counter around synchronous work."""

    def __init__(self, torch_mod: Any, cuda: bool, events: bool) -> None:
        self.torch = torch_mod
        self.cuda = cuda
        self.events = events and cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, step: Callable[[int], Any], start: int, k: int) -> float:
        """Seconds per step over k steps starting at input index `start`."""
        if self.events:
            begin = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            self.sync()
            begin.record()
            for i in range(k):
                step(start + i)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0 / k
        self.sync()
        t0 = time.perf_counter()
        for i in range(k):
            step(start + i)
        self.sync()
        return (time.perf_counter() - t0) / k


def measure(
    step: Callable[[int], Any], timer: Timer, budget_s: float, warmup: int, min_rep: int, max_rep: int
) -> dict[str, Any]:
    """Warm up, size repeats to the time budget, return median/p10/p90 step time in ms."""
    for i in range(warmup):
        step(i)
    timer.sync()
    probe = timer.run(step, warmup, 2)
    k = max(1, int(0.1 / max(probe, 1e-6)))  # ~0.1 s per repeat
    reps = min(max_rep, max(min_rep, int(budget_s / max(k * probe, 1e-6))))
    times = [timer.run(step, r * k, k) for r in range(reps)]
    times.sort()
    return {
        "step_ms": statistics.median(times) * 1e3,
        "p10_ms": times[int(0.1 * (len(times) - 1))] * 1e3,
        "p90_ms": times[math.ceil(0.9 * (len(times) - 1))] * 1e3,
        "steps_per_repeat": k,
        "repeats": reps,
    }


KERNEL_CATEGORIES = (
    ("attention (fused)", ("flash", "fmha", "mha", "attention", "efficient_attention")),
    ("softmax", ("softmax",)),
    ("matmul/gemm", ("gemm", "cutlass", "xmma", "cublas", "matmul", "sm90_", "sm80_", "addmm", "bmm", "linear")),
    ("layernorm", ("layer_norm", "layernorm", "layernormalization")),
    ("gelu", ("gelu",)),
    ("transpose/copy/concat", ("transpose", "permute", "copy", "memcpy", "cat", "concat", "contiguous", "slice")),
    ("embedding/gather", ("gather", "index", "embedding")),
)


def kernel_category(name: str) -> str:
    """Coarse bucket of a GPU kernel (or CPU op) name, for the profile summary."""
    low = name.lower()
    for label, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other (elementwise, reductions, ...)"


def profile_steps(torch: Any, step: Callable[[int], Any], cuda: bool, steps: int = 5) -> dict[str, Any]:
    """Kernel time by category and top kernels over `steps` steps (torch.profiler: CUPTI sees onnxruntime's
    kernels too, as they run in this process), plus GPU busy time vs wall time (launch-bound if far apart)."""
    from torch.profiler import ProfilerActivity, profile

    step(0)
    if cuda:
        torch.cuda.synchronize()
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    rows = []
    for e in prof.key_averages():
        if cuda:
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0)
        else:
            us = e.self_cpu_time_total
        if us and us > 0:
            rows.append((e.key, us / 1e3 / steps, e.count / steps))
    busy = sum(r[1] for r in rows)
    cats: dict[str, float] = {}
    for name, ms, _ in rows:
        cats[kernel_category(name)] = cats.get(kernel_category(name), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return {
        "wall_ms_per_step": wall * 1e3,
        "busy_ms_per_step": busy,
        "busy_pct_of_wall": 100 * busy / (wall * 1e3) if wall else None,
        "by_category": {
            k: {"ms": round(v, 3), "pct": round(100 * v / busy, 1) if busy else None}
            for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "top": [{"name": n[:120], "ms": round(ms, 3), "calls": round(c, 1)} for n, ms, c in rows[:15]],
        "what": "GPU kernel time (CUPTI)" if cuda else "CPU op self time",
    }


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
def random_sets(g: int, n: int, seq_len: int, vocab: int, sets: int, seed: int) -> list[np.ndarray]:
    """Input sets of random ids in [1000, vocab) (never pad or special ids)."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab // 2)
    return [rng.integers(low, vocab, size=(g, n, seq_len), dtype=np.int64).astype(np.int32) for _ in range(sets)]


def torch_measurements(
    torch: Any,
    model: Any,
    device: str,
    sets: list[np.ndarray],
    m: int,
    cfg: argparse.Namespace,
    out: dict[str, Any],
    profiles: dict[str, Any] | None = None,
) -> np.ndarray:
    """Eager and CUDA-graph measurements for one (N, size); returns the eager output of set 0 (for parity checks)."""
    xs = [torch.from_numpy(s).to(device) for s in sets]
    cuda = device == "cuda"
    timer = Timer(torch, cuda, events=True)
    with torch.inference_mode():
        ref = model(xs[0]).float().cpu().numpy()
        res = measure(lambda i: model(xs[i % len(xs)]), timer, cfg.seconds, cfg.warmup, cfg.min_rep, cfg.max_rep)
        out["torch_eager"] = res
        if profiles is not None:
            try:
                profiles["torch_eager"] = profile_steps(torch, lambda i: model(xs[i % len(xs)]), cuda)
            except Exception as exc:  # a profiler problem must not cost the measurements
                profiles["torch_eager"] = {"error": _one_line(exc)}
        if not cuda:
            out["torch_graph"] = {"error": "n/a: CUDA graphs need a GPU (--check runs on CPU)"}
            return ref
        try:
            static_in = xs[0].clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model(static_in)

            def replay(i: int) -> None:
                static_in.copy_(xs[i % len(xs)])
                graph.replay()

            out["torch_graph"] = measure(replay, timer, cfg.seconds, cfg.warmup, cfg.min_rep, cfg.max_rep)
            static_in.copy_(xs[0])
            graph.replay()
            torch.cuda.synchronize()
            out["torch_graph"]["max_abs_diff_vs_eager"] = float(np.max(np.abs(static_out.float().cpu().numpy() - ref)))
        except Exception as exc:  # record and go on with the sweep
            out["torch_graph"] = {"error": _one_line(exc)}
    return ref


def ort_session(ort: Any, path: str, device: str) -> Any:
    """An onnxruntime session on the CUDA EP (or CPU EP in --check); fails if CUDA was asked but did not start."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if device == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(path, opts, providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError(f"CUDA EP did not start (providers {sess.get_providers()})")
    return sess


def ort_iobinding(
    ort: Any,
    sess: Any,
    sets: list[np.ndarray],
    device: str,
    timer: Timer,
    cfg: argparse.Namespace,
    profiles: dict[str, Any] | None = None,
    tag: str = "",
) -> tuple[dict[str, Any], np.ndarray]:
    """Run with inputs and outputs resident on the device (OrtValue + I/O binding)."""
    dev = "cuda" if device == "cuda" else "cpu"
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    values = [ort.OrtValue.ortvalue_from_numpy(s, dev, 0) for s in sets]
    probe = sess.run([out_name], {in_name: sets[0]})[0]
    out_value = ort.OrtValue.ortvalue_from_shape_and_type(list(probe.shape), probe.dtype, dev, 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_output(out_name, out_value)

    def step(i: int) -> None:
        binding.bind_ortvalue_input(in_name, values[i % len(values)])
        sess.run_with_iobinding(binding)

    res = measure(step, timer, cfg.seconds, cfg.warmup, cfg.min_rep, cfg.max_rep)
    if profiles is not None:
        try:
            profiles[tag] = profile_steps(timer.torch, step, device == "cuda")
        except Exception as exc:  # a profiler problem must not cost the measurements
            profiles[tag] = {"error": _one_line(exc)}
    step(0)
    return res, out_value.numpy()


def ort_host(sess: Any, sets: list[np.ndarray], timer: Timer, cfg: argparse.Namespace) -> dict[str, Any]:
    """Plain session.run with numpy in and out (host<->device copies included)."""
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return measure(
        lambda i: sess.run([out_name], {in_name: sets[i % len(sets)]}),
        timer,
        cfg.seconds,
        cfg.warmup,
        cfg.min_rep,
        cfg.max_rep,
    )


def runtime_measurement(
    bundle: str, sets: list[np.ndarray], m: int, g: int, timer: Timer, cfg: argparse.Namespace, method: str = "predict"
) -> dict[str, Any]:
    """MuxRuntime.predict (or `method`) on [M, L] instances (the first m rows of each packed set) through the
    fused ONNX (fp16 on a GPU; fp32 in --check)."""
    try:
        from muxdeploy.runtimes.runtime import MuxRuntime
    except ImportError as exc:
        return {"error": f"TODO: muxdeploy.runtimes.runtime not available on this branch ({_one_line(exc)})"}
    rows = [s.reshape(-1, s.shape[-1])[:m] for s in sets]
    rt = None
    errors = []
    for precision in ("fp32",) if cfg.check else ("fp16", "auto"):
        try:
            rt = MuxRuntime(bundle, backend="onnxruntime", precision=precision, max_batch=g, workers=1)
            break
        except Exception as exc:  # try the next precision, keep the reason
            errors.append(f"precision={precision}: {_one_line(exc)}")
    if rt is None:
        return {"error": "; ".join(errors)}
    try:
        call = getattr(rt, method)
        res = measure(lambda i: call(rows[i % len(rows)]), timer, cfg.seconds, cfg.warmup, cfg.min_rep, cfg.max_rep)
        res["precision_used"] = precision
        res["backend_name"] = str(getattr(rt, "backend_name", ""))
        if errors:
            res["notes"] = errors
        return res
    except Exception as exc:
        return {"error": _one_line(exc)}
    finally:
        close = getattr(rt, "close", None)
        if callable(close):
            close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="N = 1, 10 only and shorter measurements")
    p.add_argument("--check", action="store_true", help="CPU smoke run: tiny preset, small sizes, no CUDA needed")
    p.add_argument("--n", default=None, help="comma-separated N values (default 1,2,5,10,20,40)")
    p.add_argument("--sizes", default=None, help="instances per step, comma-separated (default 64,1280)")
    p.add_argument("--preset", default=None, help="model preset (default base; tiny with --check)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per instance (default 128; 16 with --check)")
    p.add_argument("--seconds", type=float, default=None, help="measurement budget per (backend, N, size)")
    p.add_argument("--budget-s", type=float, default=None, help="overall wall-clock budget; later configs are skipped")
    p.add_argument("--workers", type=int, default=3, help="processes exporting ONNX in parallel")
    p.add_argument("--cache-dir", default=os.environ.get("MUXBENCH_CACHE", "/tmp/muxbench"), help="ONNX cache")
    p.add_argument("--backends", default=",".join(BACKENDS), help="subset of: " + ",".join(BACKENDS))
    p.add_argument("--profile", action="store_true", help="also profile GPU kernels at --profile-n, largest size")
    p.add_argument("--profile-n", type=int, default=10, help="N to profile with --profile")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_sweep.json or bench/out/gpu_sweep.json)")
    cfg = p.parse_args(argv)
    default_n = "1,10" if cfg.quick or cfg.check else "1,2,5,10,20,40"
    cfg.ns = [int(x) for x in (cfg.n or default_n).split(",")]
    cfg.sizes = [int(x) for x in (cfg.sizes or ("16,64" if cfg.check else "64,1280")).split(",")]
    cfg.preset = cfg.preset or ("tiny" if cfg.check else "base")
    cfg.seq_len = cfg.seq_len or (16 if cfg.check else 128)
    cfg.seconds = cfg.seconds if cfg.seconds is not None else (0.3 if cfg.check else 0.6 if cfg.quick else 1.0)
    cfg.budget_s = cfg.budget_s if cfg.budget_s is not None else (300.0 if cfg.check else 420.0)
    cfg.warmup = 2 if cfg.check else 3
    cfg.min_rep, cfg.max_rep = (3, 10) if (cfg.check or cfg.quick) else (5, 30)
    cfg.backends = [b.strip() for b in cfg.backends.split(",") if b.strip()]
    unknown = sorted(set(cfg.backends) - set(BACKENDS))
    if unknown:
        p.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if cfg.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "out"
        cfg.out = str(base / "gpu_sweep.json")
    return cfg


def load_ort(device: str) -> tuple[Any, str | None]:
    """onnxruntime (after torch, so CUDA libraries are loaded) and why CUDA is unusable, if it is."""
    import onnxruntime as ort

    if device != "cuda":
        return ort, None
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # torch has usually loaded the libraries already
            pass
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ort, (
            f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent} has no CUDAExecutionProvider; "
            "put onnxruntime-gpu first on PYTHONPATH (e.g. PYTHONPATH=/tmp/site:.)"
        )
    return ort, None


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter()
    if not cfg.check:
        import torch

        if not torch.cuda.is_available():  # before any export starts (workers are spawned, so CUDA state is safe)
            print("error: no CUDA device visible to torch; run with --check for the CPU smoke mode", file=sys.stderr)
            return 2
    # Start the export workers before CUDA is initialized (spawn: no forked CUDA state).
    ctx = mp.get_context("spawn")
    max_batch = max(-(-m // n) for m in cfg.sizes for n in cfg.ns)
    # On a big host, pin the exporters away from the first two cores, which this process keeps for
    # launching GPU work (eager PyTorch at small batches is launch-bound, so CPU contention would skew it).
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 2))
    main_cores, worker_cores = (cpus[:2], cpus[2:]) if len(cpus) >= 6 else (None, None)
    threads = max(1, len(worker_cores or cpus) // max(1, cfg.workers))
    need_onnx = any(b.startswith("ort") or b in RUNTIMES for b in cfg.backends)
    pool = cf.ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) if need_onnx else None
    futures = {}
    if pool is not None:
        for n in cfg.ns:
            futures[n] = pool.submit(
                prepare_onnx, cfg.preset, n, cfg.seq_len, max_batch, cfg.cache_dir, threads, cfg.check, worker_cores
            )
    if main_cores:
        os.sched_setaffinity(0, main_cores)

    import torch

    from muxdeploy.models import build_model
    from muxdeploy.models.presets import preset_config

    device = "cpu" if cfg.check else "cuda"
    ort, ort_problem = load_ort(device)
    meta = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "mode": "check" if cfg.check else ("quick" if cfg.quick else "full"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})",
        "host_cpus": os.cpu_count(),
        "cpu_pinning": {"main": main_cores, "exporters": worker_cores, "export_threads": threads},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxruntime_problem": ort_problem,
        "preset": cfg.preset,
        "seq_len": cfg.seq_len,
        "dtype": "fp32 (CPU check mode)" if cfg.check else "fp16",
        "ns": cfg.ns,
        "sizes": cfg.sizes,
        "seconds_per_config": cfg.seconds,
        "note": "instances/s counts real instances; G = ceil(instances/N) groups per step; onnxruntime sessions "
        "use the default graph_optimization_level (ORT_ENABLE_ALL), so ort_unfused gets onnxruntime's own "
        "load-time fusions but not the offline BERT fusions of ort_fused",
    }
    results: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    prep: dict[int, Any] = {}
    refs: dict[tuple[int, int], np.ndarray] = {}
    inputs: dict[tuple[int, int], list[np.ndarray]] = {}

    def over_budget() -> bool:
        return time.perf_counter() - started > cfg.budget_s

    def record(n: int, m: int, backend: str, res: dict[str, Any]) -> None:
        g = -(-m // n)
        row = {"backend": backend, "n": n, "instances": m, "groups": g, "slots": g * n, **res}
        if "step_ms" in res:
            row["instances_per_s"] = m / (res["step_ms"] / 1e3)
        results.append(row)
        if "step_ms" in res:
            label = f"{row['instances_per_s']:,.0f} inst/s ({res['step_ms']:.2f} ms/step)"
        else:
            label = str(res.get("error"))
        print(f"[{time.perf_counter() - started:6.1f}s] N={n:<3} M={m:<5} {backend:<15} {label}", flush=True)
        save()

    def save() -> None:
        path = Path(cfg.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": {**meta, "elapsed_s": round(time.perf_counter() - started, 1), "prep": prep},
            "results": results,
            "summary": summarize(results, cfg),
            "profile": profiles,
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    # ---- phase 1: PyTorch (GPU busy while the workers export) --------------------------------
    for n in cfg.ns:
        config = preset_config(cfg.preset, n, seq_len=cfg.seq_len)
        for m in cfg.sizes:
            g = -(-m // n)
            inputs[(n, m)] = random_sets(g, n, cfg.seq_len, config.vocab_size, NUM_INPUT_SETS, seed=n * 100003 + m)
        if not {"torch_eager", "torch_graph"} & set(cfg.backends):
            continue
        model = build_model(config)
        model.init_weights(SEED)
        model.eval()
        if device == "cuda":
            model = model.half().cuda()
        for m in cfg.sizes:
            if over_budget():
                record(n, m, "torch_eager", {"error": "skipped: over --budget-s"})
                continue
            out: dict[str, Any] = {}
            prof = profiles if (cfg.profile and n == cfg.profile_n and m == max(cfg.sizes)) else None
            try:
                refs[(n, m)] = torch_measurements(torch, model, device, inputs[(n, m)], m, cfg, out, prof)
            except Exception as exc:
                out.setdefault("torch_eager", {"error": _one_line(exc)})
            for b in ("torch_eager", "torch_graph"):
                if b in cfg.backends and b in out:
                    record(n, m, b, out[b])
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

    # ---- phase 2: onnxruntime and our runtime -------------------------------------------------
    timer = Timer(torch, device == "cuda", events=False)
    for n in cfg.ns:
        if pool is None:
            break
        try:
            info = futures[n].result(timeout=max(1.0, cfg.budget_s + 120 - (time.perf_counter() - started)))
            prep[n] = info
            how = "cached" if info.get("cached") else f"export {info.get('export_s')} s"
            print(
                f"[{time.perf_counter() - started:6.1f}s] N={n:<3} ONNX ready ({how}; fusions {info.get('fusions')})",
                flush=True,
            )
        except Exception as exc:
            prep[n] = {"error": _one_line(exc)}
            for m in cfg.sizes:
                for b in cfg.backends:
                    if b.startswith("ort") or b in RUNTIMES:
                        record(n, m, b, {"error": f"ONNX preparation failed: {_one_line(exc)}"})
            continue
        files = info["files"]
        for variant in ("unfused", "fused"):
            wanted = [b for b in cfg.backends if b in (f"ort_{variant}", f"ort_{variant}_host")]
            if not wanted:
                continue
            if ort_problem:
                for m in cfg.sizes:
                    for b in wanted:
                        record(n, m, b, {"error": ort_problem})
                continue
            try:
                # --check on CPU: onnxruntime has no CPU kernels for fused fp16 ops, so the fused graph runs in fp32
                path = files["fp32_fused"] if (cfg.check and variant == "fused") else files[f"fp16_{variant}"]
                sess = ort_session(ort, path, device)
            except Exception as exc:
                for m in cfg.sizes:
                    for b in wanted:
                        record(n, m, b, {"error": f"session: {_one_line(exc)}"})
                continue
            for m in cfg.sizes:
                if over_budget():
                    for b in wanted:
                        record(n, m, b, {"error": "skipped: over --budget-s"})
                    continue
                sets = inputs[(n, m)]
                if f"ort_{variant}" in wanted:
                    try:
                        prof = profiles if (cfg.profile and n == cfg.profile_n and m == max(cfg.sizes)) else None
                        res, got = ort_iobinding(ort, sess, sets, device, timer, cfg, prof, f"ort_{variant}")
                        if (n, m) in refs:
                            res["max_abs_diff_vs_torch"] = float(np.max(np.abs(got - refs[(n, m)])))
                        record(n, m, f"ort_{variant}", res)
                    except Exception as exc:
                        record(n, m, f"ort_{variant}", {"error": _one_line(exc)})
                if f"ort_{variant}_host" in wanted:
                    try:
                        record(n, m, f"ort_{variant}_host", ort_host(sess, sets, timer, cfg))
                    except Exception as exc:
                        record(n, m, f"ort_{variant}_host", {"error": _one_line(exc)})
            del sess
        for name, method in RUNTIMES.items():
            if name not in cfg.backends:
                continue
            for m in cfg.sizes:
                if over_budget():
                    record(n, m, name, {"error": "skipped: over --budget-s"})
                    continue
                res = runtime_measurement(files["bundle"], inputs[(n, m)], m, -(-m // n), timer, cfg, method)
                record(n, m, name, res)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    save()
    print_table(results, cfg, meta)
    print_profiles(profiles, cfg)
    print(f"wrote {cfg.out} ({time.perf_counter() - started:.0f} s)")
    return 0


def print_profiles(profiles: dict[str, Any], cfg: argparse.Namespace) -> None:
    """Per backend: busy vs wall time per step and the time share of each kernel category."""
    if not profiles:
        return
    print(f"\nprofile at N={cfg.profile_n}, {max(cfg.sizes)} instances/step (ms per step; % of busy time)")
    for backend, prof in profiles.items():
        if "error" in prof:
            print(f"  {backend}: {prof['error']}")
            continue
        cats = ", ".join(f"{k} {v['ms']:.2f} ({v['pct']}%)" for k, v in prof["by_category"].items())
        print(f"  {backend}: wall {prof['wall_ms_per_step']:.2f}, busy {prof['busy_ms_per_step']:.2f} | {cats}")


def _ips(results: list[dict[str, Any]], backend: str, n: int, m: int) -> float | None:
    for r in results:
        if r["backend"] == backend and r["n"] == n and r["instances"] == m and "instances_per_s" in r:
            return float(r["instances_per_s"])
    return None


def summarize(results: list[dict[str, Any]], cfg: argparse.Namespace) -> dict[str, Any]:
    """Ratios: each N vs N=1 of the same backend, each backend vs torch_eager, runtime overhead vs its raw backend."""
    out: dict[str, Any] = {"vs_n1": {}, "vs_eager": {}, "runtime_overhead_pct": {}}
    for b in BACKENDS:
        for m in cfg.sizes:
            base = _ips(results, b, 1, m)
            for n in cfg.ns:
                v = _ips(results, b, n, m)
                if v and base:
                    out["vs_n1"].setdefault(b, {}).setdefault(str(m), {})[str(n)] = round(v / base, 2)
                e = _ips(results, "torch_eager", n, m)
                if v and e:
                    out["vs_eager"].setdefault(b, {}).setdefault(str(m), {})[str(n)] = round(v / e, 2)
    for name in RUNTIMES:
        key = f"{name}_overhead_pct"  # runtime_overhead_pct, runtime_array_overhead_pct
        for m in cfg.sizes:
            for n in cfg.ns:
                raw, rt = _ips(results, "ort_fused_host", n, m), _ips(results, name, n, m)
                if raw and rt:
                    out.setdefault(key, {}).setdefault(str(m), {})[str(n)] = round((raw / rt - 1) * 100, 1)
    return out


def print_table(results: list[dict[str, Any]], cfg: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Instances/s (thousands) per backend and N, one block per step size, then the ratios."""
    print()
    print(
        f"{meta['device']} | preset {cfg.preset} L={cfg.seq_len} {meta['dtype']} | "
        f"torch {meta['torch']} | ort {meta['onnxruntime']}"
    )
    backends = [b for b in BACKENDS if b in cfg.backends]
    summary = summarize(results, cfg)
    for m in cfg.sizes:
        print(f"\ninstances/s (k), {m} instances per step")
        print(f"{'N':>4} " + " ".join(f"{b:>14}" for b in backends))
        for n in cfg.ns:
            cells = []
            for b in backends:
                v = _ips(results, b, n, m)
                cells.append(f"{v / 1e3:14.1f}" if v else f"{'-':>14}")
            print(f"{n:>4} " + " ".join(cells))
        if 1 in cfg.ns and 10 in cfg.ns:
            cells = []
            for b in backends:
                r = summary["vs_n1"].get(b, {}).get(str(m), {}).get("10")
                cells.append(f"{r:13.2f}x" if r else f"{'-':>14}")
            print(f"{'10/1':>4} " + " ".join(cells))
    for name in RUNTIMES:
        key = f"{name}_overhead_pct"  # runtime_overhead_pct, runtime_array_overhead_pct
        if summary.get(key):
            overhead = json.dumps(summary[key])
            print(f"\n{name} overhead vs raw onnxruntime (fused fp16, host I/O), % by size then N: {overhead}")
    errors = sorted({(r["backend"], r["error"]) for r in results if "error" in r})
    for b, e in errors:
        print(f"note: {b}: {e}")


if __name__ == "__main__":
    sys.exit(main())
