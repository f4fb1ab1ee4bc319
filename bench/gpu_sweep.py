"""GPU sweep: the bundle muxdeploy builds, run by its runtime, next to PyTorch eager and torch.compile.

One architecture (preset "base": BERT-base geometry, L = 128, random weights; speed does not depend on them)
at each N. For each N a checkpoint is written, then the product path builds its bundle exactly as the CLI
does (`export_bundle` = `muxdeploy export`, `run_build` = `muxdeploy build-engine --fp16 --backend
onnxruntime`), in worker processes while the GPU measures PyTorch. At each step size (instances per step),
instances/s of:

  torch_eager     the checkpoint's model (DataMuxTransformer), fp16 on CUDA, inference_mode, ids on the GPU
  torch_compile   torch.compile(model) of the same (--compile-sizes only: each shape compiles anew)
  torch_eager_numpy / torch_compile_numpy
                  the same with numpy in and out, as a PyTorch server sees a request: ids copied to the GPU,
                  logits copied back (what the runtime rows pay too; the rows above start with ids on the GPU)
  ort_session     onnxruntime.InferenceSession(the artifact) as a user would open it: numpy in/out, defaults
  ort_raw         the runtime's own backend (device-resident I/O, CUDA graphs) on pre-packed [G, N, L] numpy
  ort_raw_nograph the same without CUDA graphs
  ort_raw:<name>  the same with extra CUDA provider options (--ort-variants, e.g. the attention kernel)
  runtime_array   MuxRuntime(bundle), backend and artifact chosen automatically, predict_array([M, L] numpy)

and, at the largest size, ms per step of the input stage (everything before the encoder), the encoder and
the head: eager (the model's own modules) and the artifact (subgraphs cut at the encoder's first and last
tensors). G = ceil(instances / N) groups per step; instances/s counts real instances. Timing: warm-up, then
repeats of k back-to-back steps rotating over 4 input sets of random ids; the median step is reported.

Run on a GPU machine from the repository root (onnxruntime-gpu first on PYTHONPATH):
    PYTHONPATH=/tmp/site:. python bench/gpu_sweep.py [--n 1,10,40] [--sizes 64,1280] [--profile-n 40]
    PYTHONPATH=. python bench/gpu_sweep.py --check     # CPU smoke run: tiny preset, every code path
Writes $OUT/gpu_sweep.json (bench/out/gpu_sweep.json when OUT is unset) and prints a table. Rows keep the
schema of bench/results/*.json: backend, n, instances, instances_per_s (plus step_ms, p10_ms, p90_ms).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from timing import Timer, measure, one_line, profile_steps, random_sets  # noqa: E402

BACKENDS = (
    "torch_eager",
    "torch_compile",
    "torch_eager_numpy",
    "torch_compile_numpy",
    "ort_session",
    "ort_raw",
    "ort_raw_nograph",
    "runtime_array",
)
NUM_SETS = 4
SEED = 0


# ---------------------------------------------------------------------------------------------
# the product path, in worker processes (CPU only)
# ---------------------------------------------------------------------------------------------
def build_bundle(
    ckpt: str,
    n: int,
    max_batch: int,
    root: str,
    threads: int,
    cores: list[int] | None,
    precisions: list[str],
    variants: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """`muxdeploy export CKPT --n N --max-batch B`, then `muxdeploy build-engine --<p> --backend onnxruntime` for
    each precision (fp16 on a GPU; the CPU check adds fp32, the precision the CPU runs)."""
    if cores:
        os.sched_setaffinity(0, cores)
    import torch

    torch.set_num_threads(threads)
    from muxdeploy.build import BuildRequest, run_build
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.exporters.onnx import export_bundle

    bundle = Path(root) / f"bundle_n{n}"
    log: list[str] = []
    t0 = time.perf_counter()
    result = export_bundle(load_checkpoint(ckpt).export_spec(), n, bundle, max_batch=max_batch)
    t1 = time.perf_counter()
    written: dict[str, Any] = {}
    for precision in precisions:
        request = BuildRequest(bundle, precisions=[precision], backend="onnxruntime", bench_seconds=0, progress=False)
        written.update(run_build(request, echo=log.append))
    ort = next(v for k, v in written.items() if k.endswith(".ort.onnx") and v["precision"] == precisions[0])
    if variants:  # the same FP16 graph fused other ways: experiment rows (ort_raw:<name>), not the product
        from muxdeploy.core.manifest import Manifest
        from muxdeploy.exporters.ort_optimize import optimize_for_ort

        manifest = Manifest.load(bundle)
        cfg = manifest.data["model"]["config"]
        for label, options in variants.items():
            name = f"model.fp16.{label}.ort.onnx"
            heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
            fp16 = bundle / "model.fp16.onnx"
            facts = optimize_for_ort(bundle / "model.onnx", fp16, bundle / name, "fp16", heads, hidden, **options)
            manifest.add_artifact(name, "onnx", "fp16", role="experiment", fused=facts["fused"])
        manifest.save()
    return {
        "bundle": str(bundle),
        "export_s": round(t1 - t0, 1),
        "build_s": round(time.perf_counter() - t1, 1),
        "export_parity_max_abs_diff": result.max_abs_diff,
        "fused": ort.get("fused"),
        "fp16_vs_fp32": {k: ort["accuracy"][k] for k in ("max_abs_diff", "argmax_agreement", "held_out_instances")},
        "log": log,
    }


def make_checkpoint(preset: str, n: int, seq_len: int, root: Path) -> Path:
    """A checkpoint of random weights (seed 0) at this N: what the eager, compiled and exported models share."""
    from muxdeploy.checkpoint import save_checkpoint
    from muxdeploy.models import build_model
    from muxdeploy.models.presets import preset_config

    path = root / f"ckpt_n{n}.pt"
    model = build_model(preset_config(preset, n, seq_len=seq_len))
    model.init_weights(SEED)
    save_checkpoint(path, model)
    return path


# ---------------------------------------------------------------------------------------------
# stage split: input stage / encoder / head
# ---------------------------------------------------------------------------------------------
def eager_stages(torch: Any, model: Any, x: Any, timer: Timer, seconds: float) -> dict[str, float]:
    """ms per step of the model's own input stage, encoder and head."""
    with torch.inference_mode():
        mixed = model.input_stage(x)
        hidden = model.encoder(mixed)
        return {
            "input_stage": measure(lambda i: model.input_stage(x), timer, seconds)["step_ms"],
            "encoder": measure(lambda i: model.encoder(mixed), timer, seconds)["step_ms"],
            "head": measure(lambda i: model.head(hidden), timer, seconds)["step_ms"],
        }


def split_artifact(path: Path, out_dir: Path) -> dict[str, Path]:
    """The artifact cut into input stage / encoder / head (cut at the first attention's input and the encoder's
    last SkipLayerNormalization output)."""
    import onnx
    from onnx.utils import extract_model

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    first = next(n for n in nodes if n.op_type in ("Attention", "MultiHeadAttention"))
    last = [n for n in nodes if n.op_type == "SkipLayerNormalization"][-1]
    mixed, hidden = first.input[0], last.output[0]
    inp, out = model.graph.input[0].name, model.graph.output[0].name
    parts = {"input_stage": ([inp], [mixed]), "encoder": ([mixed], [hidden]), "head": ([hidden], [out])}
    files = {}
    for name, (ins, outs) in parts.items():
        files[name] = out_dir / f"{path.stem}.{name}.onnx"
        extract_model(str(path), str(files[name]), ins, outs, check_model=False)
    return files


def ort_stages(ort: Any, files: dict[str, Path], x: np.ndarray, device: str, timer: Timer, seconds: float) -> dict:
    """ms per step of each cut of the artifact on onnxruntime (device-resident I/O), each fed its real input."""
    from muxdeploy.runtimes.backends.onnxruntime import make_session

    feed: Any = x
    out: dict[str, float] = {}
    for name in ("input_stage", "encoder", "head"):
        sess = make_session(files[name], device)
        value = ort.OrtValue.ortvalue_from_numpy(feed, "cuda" if device == "cuda" else "cpu", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(sess.get_inputs()[0].name, value)
        binding.bind_output(sess.get_outputs()[0].name, "cuda" if device == "cuda" else "cpu")
        out[name] = measure(lambda i, s=sess, b=binding: s.run_with_iobinding(b), timer, seconds)["step_ms"]
        feed = sess.run(None, {sess.get_inputs()[0].name: feed})[0]
    return out


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="CPU smoke run: tiny preset, small sizes, no CUDA needed")
    p.add_argument("--n", default=None, help="comma-separated N (default 1,10,40)")
    p.add_argument("--sizes", default=None, help="instances per step, comma-separated (default 64,1280)")
    p.add_argument("--compile-sizes", default=None, help="sizes that also get torch_compile (default: the largest)")
    p.add_argument("--preset", default=None, help="model preset (default base; tiny with --check)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per instance (default 128; 16 with --check)")
    p.add_argument("--seconds", type=float, default=None, help="measurement budget per row (default 1.0)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="subset of: " + ",".join(BACKENDS))
    p.add_argument("--ort-variants", default="", help='JSON {"name": {provider options}} for extra ort_raw rows')
    p.add_argument("--profile-n", default="", help="N values to profile (kernel time by category), comma-separated")
    p.add_argument("--workers", type=int, default=3, help="processes building bundles in parallel")
    p.add_argument(
        "--graph-variants",
        default="",
        help='JSON {"name": {optimize_for_ort options}}: extra FP16 ORT graphs measured as ort_raw:<name>, e.g. '
        '{"mha": {"attention": "MultiHeadAttention"}, "sln": {"embed": "SkipLayerNormalization"}}',
    )
    p.add_argument("--reuse", action="store_true", help="reuse bundles an earlier run left under --root")
    p.add_argument("--root", default=os.environ.get("MUXBENCH_ROOT", "/tmp/muxbench"), help="checkpoints, bundles")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_sweep.json or bench/out/gpu_sweep.json)")
    cfg = p.parse_args(argv)
    cfg.ns = [int(x) for x in (cfg.n or ("1,4" if cfg.check else "1,10,40")).split(",")]
    cfg.sizes = [int(x) for x in (cfg.sizes or ("8,32" if cfg.check else "64,1280")).split(",")]
    cfg.compile_sizes = [int(x) for x in cfg.compile_sizes.split(",")] if cfg.compile_sizes else [max(cfg.sizes)]
    cfg.preset = cfg.preset or ("tiny" if cfg.check else "base")
    cfg.seq_len = cfg.seq_len or (16 if cfg.check else 128)
    cfg.seconds = cfg.seconds if cfg.seconds is not None else (0.2 if cfg.check else 1.0)
    cfg.backends = [b.strip() for b in cfg.backends.split(",") if b.strip()]
    cfg.variants = json.loads(cfg.ort_variants) if cfg.ort_variants else {}
    cfg.graphs = json.loads(cfg.graph_variants) if cfg.graph_variants else {}
    cfg.profile_ns = [int(x) for x in cfg.profile_n.split(",") if x]
    if cfg.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "out"
        cfg.out = str(base / "gpu_sweep.json")
    return cfg


class Report:
    """Rows, stage splits, profiles and bundle facts, saved after every row (a killed run keeps what it had)."""

    def __init__(self, cfg: argparse.Namespace, meta: dict[str, Any]) -> None:
        self.cfg, self.meta = cfg, meta
        self.rows: list[dict[str, Any]] = []
        self.stages: list[dict[str, Any]] = []
        self.profiles: dict[str, Any] = {}
        self.bundles: dict[str, Any] = {}
        self.started = time.perf_counter()

    def row(self, backend: str, n: int, m: int, res: dict[str, Any]) -> None:
        row = {"backend": backend, "n": n, "instances": m, "groups": -(-m // n), **res}
        if "step_ms" in res:
            row["instances_per_s"] = m / (res["step_ms"] / 1e3)
            label = f"{row['instances_per_s']:>12,.0f} inst/s  {res['step_ms']:8.3f} ms/step"
        else:
            label = str(res.get("error"))
        self.rows.append(row)
        print(f"[{time.perf_counter() - self.started:6.1f}s] N={n:<3} M={m:<5} {backend:<22} {label}", flush=True)
        self.save()

    def ips(self, backend: str, n: int, m: int) -> float | None:
        for r in self.rows:
            if r["backend"] == backend and r["n"] == n and r["instances"] == m and "instances_per_s" in r:
                return float(r["instances_per_s"])
        return None

    def summary(self) -> dict[str, Any]:
        """runtime_array against eager, compile and its raw backend; every backend's N / N=1."""
        pairs = {
            "runtime_vs_eager": "torch_eager",
            "runtime_vs_compile": "torch_compile",
            "runtime_vs_eager_numpy": "torch_eager_numpy",
            "runtime_vs_compile_numpy": "torch_compile_numpy",
        }
        out: dict[str, Any] = {key: {} for key in pairs}
        out["runtime_overhead_pct"] = {}
        out["vs_n1"] = {}
        backends = sorted({r["backend"] for r in self.rows})
        for m in self.cfg.sizes:
            for n in self.cfg.ns:
                rt = self.ips("runtime_array", n, m)
                for key, other in pairs.items():
                    base = self.ips(other, n, m)
                    if rt and base:
                        out[key].setdefault(str(m), {})[str(n)] = round(rt / base, 3)
                raw = self.ips("ort_raw", n, m)
                if rt and raw:
                    out["runtime_overhead_pct"].setdefault(str(m), {})[str(n)] = round((raw / rt - 1) * 100, 2)
                for b in backends:
                    v, one = self.ips(b, n, m), self.ips(b, 1, m)
                    if v and one and n != 1:
                        out["vs_n1"].setdefault(b, {}).setdefault(str(m), {})[str(n)] = round(v / one, 2)
        return out

    def save(self) -> None:
        path = Path(self.cfg.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": {**self.meta, "elapsed_s": round(time.perf_counter() - self.started, 1)},
            "rows": self.rows,
            "summary": self.summary(),
            "stages": self.stages,
            "bundles": self.bundles,
            "profiles": self.profiles,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    def print_table(self) -> None:
        print(f"\n{self.meta['device']} | preset {self.cfg.preset} L={self.cfg.seq_len} | {self.meta['versions']}")
        backends = list(dict.fromkeys(r["backend"] for r in self.rows))
        for m in self.cfg.sizes:
            print(f"\ninstances/s, {m} instances per step")
            print(f"{'N':>4} " + " ".join(f"{b[:16]:>16}" for b in backends))
            for n in self.cfg.ns:
                cells = [self.ips(b, n, m) for b in backends]
                print(f"{n:>4} " + " ".join(f"{v:16,.0f}" if v else f"{'-':>16}" for v in cells))
        for s in self.stages:
            what = {k: round(v, 3) for k, v in s["ms"].items()} if "ms" in s else s.get("error")
            print(f"stages N={s['n']} M={s['instances']} {s['engine']}: {what}")
        print("\n" + json.dumps(self.summary(), indent=1))
        for r in self.rows:
            if "error" in r:
                print(f"note: N={r['n']} M={r['instances']} {r['backend']}: {r['error']}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    device = "cpu" if cfg.check else "cuda"
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    # the measuring process keeps two cores (launch-bound small steps must not wait for a core); builders get the rest
    main_cores, worker_cores = (cpus[:2], cpus[2:]) if len(cpus) >= 6 else (None, None)
    threads = max(1, len(worker_cores or cpus) // max(1, cfg.workers))
    ckpts = {
        n: root / f"ckpt_n{n}.pt"
        if cfg.reuse and (root / f"ckpt_n{n}.pt").is_file()
        else make_checkpoint(cfg.preset, n, cfg.seq_len, root)
        for n in cfg.ns
    }
    max_batch = {n: max(-(-m // n) for m in cfg.sizes) for n in cfg.ns}
    precisions = ["fp16", "fp32"] if cfg.check else ["fp16"]
    pool = cf.ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn"))
    builds = {
        n: pool.submit(
            build_bundle, str(ckpts[n]), n, max_batch[n], str(root), threads, worker_cores, precisions, cfg.graphs
        )
        for n in cfg.ns
        if not (cfg.reuse and (root / f"bundle_n{n}" / "muxdeploy.json").is_file())
    }
    if main_cores:
        os.sched_setaffinity(0, main_cores)

    import onnxruntime as ort
    import torch

    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.core.manifest import Manifest
    from muxdeploy.runtimes import MuxRuntime
    from muxdeploy.runtimes.backends import Selection, create, select

    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch; use --check on a CPU", file=sys.stderr)
        return 2
    meta = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["bench/gpu_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.machine()})",
        "host_cpus": len(cpus),
        "versions": f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"onnxruntime {ort.__version__} {ort.get_available_providers()}",
        "preset": cfg.preset,
        "seq_len": cfg.seq_len,
        "dtype": "fp32 (CPU check)" if cfg.check else "fp16",
    }
    report = Report(cfg, meta)
    timer_events = Timer(torch, device == "cuda", events=True)
    timer_host = Timer(torch, device == "cuda", events=False)
    inputs = {
        (n, m): random_sets(-(-m // n), n, cfg.seq_len, 30522, NUM_SETS, n * 7919 + m)
        for n in cfg.ns
        for m in cfg.sizes
    }

    # ---- PyTorch, while the bundles build ----------------------------------------------------
    for n in cfg.ns:
        model = load_checkpoint(ckpts[n]).model.eval()
        if device == "cuda":
            model = model.half().cuda()
        for m in cfg.sizes:
            xs = [torch.from_numpy(s).to(device) for s in inputs[(n, m)]]
            hs = inputs[(n, m)]

            def numpy_io(f: Any, i: int, x: list[np.ndarray] = hs) -> np.ndarray:
                """ids from host memory to the GPU, logits back: a request's trip through a PyTorch server."""
                return f(torch.from_numpy(x[i % NUM_SETS]).to(device)).float().cpu().numpy()

            with torch.inference_mode():
                if "torch_eager" in cfg.backends:
                    report.row(
                        "torch_eager",
                        n,
                        m,
                        measure(lambda i, f=model, x=xs: f(x[i % NUM_SETS]), timer_events, cfg.seconds),
                    )
                if "torch_eager_numpy" in cfg.backends:
                    res = measure(lambda i, f=model: numpy_io(f, i), timer_host, cfg.seconds)
                    report.row("torch_eager_numpy", n, m, res)
                if n in cfg.profile_ns and m == max(cfg.sizes):
                    report.profiles[f"torch_eager_n{n}"] = profile_steps(
                        torch, lambda i, f=model, x=xs: f(x[i % NUM_SETS]), device == "cuda"
                    )
                if "torch_compile" in cfg.backends and m in cfg.compile_sizes:
                    try:
                        t0 = time.perf_counter()
                        compiled = torch.compile(model, dynamic=False)
                        compiled(xs[0])
                        res = measure(lambda i, f=compiled, x=xs: f(x[i % NUM_SETS]), timer_events, cfg.seconds)
                        res["compile_s"] = round(time.perf_counter() - t0, 1)
                        report.row("torch_compile", n, m, res)
                        if "torch_compile_numpy" in cfg.backends:
                            res = measure(lambda i, f=compiled: numpy_io(f, i), timer_host, cfg.seconds)
                            report.row("torch_compile_numpy", n, m, res)
                    except Exception as exc:  # e.g. no C++ compiler for the CPU check
                        report.row("torch_compile", n, m, {"error": one_line(exc)})
                if m == max(cfg.sizes):
                    ms = eager_stages(torch, model, xs[0], timer_events, cfg.seconds / 2)
                    report.stages.append({"n": n, "instances": m, "engine": "torch_eager", "ms": ms})
        del model
        torch.cuda.empty_cache() if device == "cuda" else None

    # ---- the bundle: raw session, the runtime's backend, the runtime -------------------------
    for n in cfg.ns:
        try:
            info = builds[n].result() if n in builds else {"bundle": str(root / f"bundle_n{n}"), "reused": True}
        except Exception as exc:
            report.bundles[str(n)] = {"error": one_line(exc)}
            print(f"N={n}: bundle build failed: {one_line(exc)}", flush=True)
            continue
        report.bundles[str(n)] = info
        print(f"N={n}: bundle {info}", flush=True)
        bundle = Path(info["bundle"])
        manifest = Manifest.load(bundle)
        chosen = select(manifest, "onnxruntime-cuda" if device == "cuda" else "onnxruntime-cpu", "auto")
        artifact = bundle / chosen.artifact
        info["artifact"] = chosen.describe()
        sizes = {m: inputs[(n, m)] for m in cfg.sizes}
        big = max(cfg.sizes)
        if "ort_session" in cfg.backends:  # as a user's app opens it: defaults, numpy in and out
            try:
                sess = ort.InferenceSession(str(artifact), providers=[f"{device.upper()}ExecutionProvider"])
                name = sess.get_inputs()[0].name
                for m, sets in sizes.items():
                    res = measure(
                        lambda i, s=sess, k=name, x=sets: s.run(None, {k: x[i % NUM_SETS]}), timer_host, cfg.seconds
                    )
                    report.row("ort_session", n, m, res)
                del sess
            except Exception as exc:
                report.row("ort_session", n, big, {"error": one_line(exc)})
        raw_rows = {"ort_raw": {}, "ort_raw_nograph": {"cuda_graphs": False}}
        raw_rows.update({f"ort_raw:{k}": {"provider_options": v} for k, v in cfg.variants.items()})
        for label in cfg.graphs:
            if f"model.fp16.{label}.ort.onnx" in manifest.artifacts:
                raw_rows[f"ort_raw:{label}"] = {"artifact": f"model.fp16.{label}.ort.onnx"}
        for label, options in raw_rows.items():
            if label in ("ort_raw", "ort_raw_nograph") and label not in cfg.backends:
                continue
            try:
                which = chosen
                if "artifact" in options:
                    which = Selection(chosen.backend, options.pop("artifact"), "fp16")
                backend = create(which, manifest, max_batch[n], **options).activate()
                for m, sets in sizes.items():
                    res = measure(lambda i, b=backend, x=sets: b.infer(x[i % NUM_SETS]), timer_host, cfg.seconds)
                    res["cuda_graphs"] = bool(getattr(backend, "uses_cuda_graphs", False))
                    if getattr(backend, "cuda_graph_error", None):
                        res["cuda_graph_error"] = backend.cuda_graph_error
                    report.row(label, n, m, res)
                if label == "ort_raw" and n in cfg.profile_ns:
                    step = lambda i, b=backend, x=sizes[big]: b.infer(x[i % NUM_SETS])  # noqa: E731
                    report.profiles[f"ort_raw_n{n}"] = profile_steps(torch, step, device == "cuda")
                backend.deactivate()
            except Exception as exc:
                report.row(label, n, big, {"error": one_line(exc)})
        if "runtime_array" in cfg.backends:
            try:
                with MuxRuntime(bundle) as rt:
                    for m, sets in sizes.items():
                        rows = [s.reshape(-1, cfg.seq_len)[:m] for s in sets]
                        res = measure(lambda i, x=rows: rt.predict_array(x[i % NUM_SETS]), timer_host, cfg.seconds)
                        res["backend_name"] = rt.backend_name
                        report.row("runtime_array", n, m, res)
            except Exception as exc:
                report.row("runtime_array", n, big, {"error": one_line(exc)})
        try:
            files = split_artifact(artifact, root)
            ms = ort_stages(ort, files, sizes[big][0], device, timer_host, cfg.seconds / 2)
            report.stages.append({"n": n, "instances": big, "engine": chosen.describe(), "ms": ms})
        except Exception as exc:
            report.stages.append({"n": n, "instances": big, "engine": chosen.describe(), "error": one_line(exc)})
    pool.shutdown(wait=False, cancel_futures=True)
    report.save()
    report.print_table()
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
