"""Train the demo's shipped sentiment models (N = 1, 2, 5, 10) with our own trainer, then ship them.

Two steps, so the training can run where there is a GPU and the shipping where the package is:

    # on a GPU machine (the lent H100: bench/device_setup.sh not needed, torch alone):
    MUXDEPLOY_CACHE=.carry/cache python3 bench/train_demo_models.py train --out $OUT
    # here, in the checkout: convert the chosen runs to fp16 model directories under muxdeploy/demo_models/,
    # score the stored weights on the held-out split, write provenance.json
    python bench/train_demo_models.py ship --runs <dir with the train step's output>

Recipe (DataMUX's): the tiny preset (2 layers, width 64; the four models fit in ~16 MB as fp16), a retrieval
warm-up (only the retrieval loss trains: every instance's own tokens recovered from the muxed
representation), then the task with the retrieval loss kept as an auxiliary objective. Every run trains until
its validation accuracy stops improving (`--patience` steps) or its time is up, and keeps its best weights.
Validation is a slice of the training split; the held-out split (the 1,057 sentences the demo scores) is
used only to report. Several settings per N run side by side, one process each; the one with the best
validation accuracy is shipped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

SEED = 0
VAL_FRACTION = 0.05
# (tag, lr, warm-up steps with the retrieval loss alone, retrieval loss coefficient after it)
SETTINGS = [
    ("warm-lr3e-4", 3e-4, 2000, 0.1),
    ("warm-lr1e-3", 1e-3, 2000, 0.1),
    ("cold-lr3e-4", 3e-4, 0, 0.0),
]


def _data() -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val, held-out): the held-out split is `split_sentiment(seed=0)`'s dev split, as everywhere."""
    from muxdeploy.training.datasets import split_sentiment

    train, held_out = split_sentiment(seed=SEED)
    n_val = round(len(train) * VAL_FRACTION)
    return train[n_val:], train[:n_val], held_out


def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run (in its own process): train, keep the best validation weights, save ckpt.pt and the curve."""
    import torch

    from muxdeploy.checkpoint import save_checkpoint
    from muxdeploy.training.classifier import train_classifier
    from muxdeploy.training.sentiment import SENTIMENT_LABELS, SENTIMENT_SEQ_LEN, sentiment_config
    from muxdeploy.training.tokenizer import bert_tokenizer, tokenize_texts

    torch.set_num_threads(1)
    train, val, _ = _data()
    tokenizer = bert_tokenizer()
    config = sentiment_config("tiny", job["n"], SENTIMENT_SEQ_LEN)
    ids = tokenize_texts(tokenizer, [t for t, _ in train], SENTIMENT_SEQ_LEN)
    val_ids = tokenize_texts(tokenizer, [t for t, _ in val], SENTIMENT_SEQ_LEN)
    groups = -(-len(ids) // job["n"])
    steps_per_epoch = -(-groups // job["batch_groups"])
    result = train_classifier(
        config,
        ids,
        [y for _, y in train],
        steps=job["max_steps"],
        batch_groups=job["batch_groups"],
        lr=job["lr"],
        seed=SEED,
        schedule="constant",
        warmup_fraction=min(0.5, job["lr_warmup_steps"] / job["max_steps"]),
        retrieval_loss_coeff=job["aux"] if job["warmup_steps"] or job["aux"] else 0.0,
        retrieval_warmup_epochs=job["warmup_steps"] / steps_per_epoch,
        dev=(val_ids, [y for _, y in val]),
        device=job["device"],
        patience_steps=job["patience"],
        max_seconds=job["max_seconds"],
        progress=False,
    )
    out = Path(job["dir"])
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: job[k] for k in ("n", "tag", "lr", "warmup_steps", "aux", "batch_groups")}
    save_checkpoint(out / "ckpt.pt", result.model, tokenizer.to_str(), SENTIMENT_LABELS, meta)
    record = {
        **meta,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "best_step": result.best_step,
        "val_accuracy": result.best_dev_accuracy,
        "retrieval_warmup_token_accuracy": result.retrieval_token_accuracy,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    (out / "run.json").write_text(json.dumps(record))
    return record


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"


def train(args: argparse.Namespace) -> None:
    """Run every (N, setting) pair side by side; copy each N's best run (by validation accuracy) to --out."""
    out = Path(args.out)
    scratch = Path(args.scratch)
    jobs = [
        {
            "n": n,
            "tag": tag,
            "lr": lr,
            "warmup_steps": warm,
            "aux": aux,
            "batch_groups": args.batch_groups,
            "max_steps": args.max_steps,
            "patience": args.patience,
            "lr_warmup_steps": args.lr_warmup_steps,
            "max_seconds": args.max_seconds,
            "device": args.device,
            "dir": str(scratch / f"n{n}-{tag}"),
        }
        for n in args.n
        for tag, lr, warm, aux in SETTINGS
        for warm in [args.warmup_steps if warm else 0]
    ]
    start = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(len(jobs), args.jobs)) as pool:
        records = pool.map(_train_one, jobs, chunksize=1)
    summary = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "device": _device_name(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "wall_seconds": round(time.time() - start, 1),
        "seed": SEED,
        "val_fraction": VAL_FRACTION,
        "runs": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    for n in args.n:
        best = max((r for r in records if r["n"] == n), key=lambda r: r["val_accuracy"] or 0.0)
        summary.setdefault("chosen", {})[str(n)] = best["tag"]
        shutil.copy(scratch / f"n{n}-{best['tag']}" / "ckpt.pt", out / f"sentiment-n{n}.pt")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    for r in records:
        print(
            f"N={r['n']:>2} {r['tag']:<12} val {r['val_accuracy']:.4f} best step {r['best_step']} of {r['steps']} "
            f"({r['seconds']} s) warm-up token acc {r['retrieval_warmup_token_accuracy']}"
        )


def ship(args: argparse.Namespace) -> None:
    """Convert the chosen runs into fp16 model directories with provenance, scored on the held-out split."""
    from muxdeploy.checkpoint import load_checkpoint, save_model_dir
    from muxdeploy.core.fsutil import write_bytes_atomic
    from muxdeploy.shipped import CALIB_FILE, CALIB_SENTENCES, DEV_FILE, SHIPPED_DIR
    from muxdeploy.training.classifier import evaluate_classifier
    from muxdeploy.training.tokenizer import tokenize_texts, tokenizer_from_json

    runs = Path(args.runs)
    summary = json.loads((runs / "train_summary.json").read_text())
    train, _, held_out = _data()
    SHIPPED_DIR.mkdir(exist_ok=True)
    calib = "".join(json.dumps({"text": t}) + "\n" for t, _ in train[:CALIB_SENTENCES])
    write_bytes_atomic(SHIPPED_DIR / CALIB_FILE, calib.encode())
    lines = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in held_out)
    write_bytes_atomic(SHIPPED_DIR / DEV_FILE, lines.encode())
    labels = [y for _, y in held_out]
    majority = max(labels.count(0), labels.count(1)) / len(labels)
    for n_text, tag in summary["chosen"].items():
        n = int(n_text)
        run = next(r for r in summary["runs"] if r["n"] == n and r["tag"] == tag)
        # the warm-up's token accuracy at this N, from the runs that had one (shipped or not)
        warm = [r for r in summary["runs"] if r["n"] == n and r["warmup_steps"]]
        ckpt = load_checkpoint(runs / f"sentiment-n{n}.pt")
        ids = tokenize_texts(tokenizer_from_json(ckpt.tokenizer_json), [t for t, _ in held_out], ckpt.config.seq_len)
        fp32_accuracy = evaluate_classifier(ckpt.model, ids, labels)
        stored = ckpt.model.half().float()  # exactly the weights the fp16 file holds, as loading widens them
        provenance = {
            "task": "sentiment (VADER movie-review snippets, BERT tokenizer)",
            "command": summary["command"] + f"  # then: python bench/train_demo_models.py ship --runs {runs.name}",
            "seed": SEED,
            "data_split": (
                f"split_sentiment(seed={SEED}): {len(held_out)} held-out sentences (sentiment-dev.jsonl); "
                f"the first {VAL_FRACTION:.0%} of the training split for validation, the rest trained on"
            ),
            "preset": "tiny",
            "setting": {k: run[k] for k in ("tag", "lr", "warmup_steps", "aux", "batch_groups")},
            "steps": run["steps"],
            "best_step": run["best_step"],
            "train_seconds": run["seconds"],
            "device": summary["device"],
            "date": summary["date"],
            "val_accuracy": run["val_accuracy"],
            "retrieval_warmup_token_accuracy": max(warm, key=lambda r: r["retrieval_warmup_token_accuracy"])[
                "retrieval_warmup_token_accuracy"
            ],
            "retrieval_warmup_runs": [
                {k: r[k] for k in ("tag", "retrieval_warmup_token_accuracy", "val_accuracy", "best_step", "steps")}
                for r in warm
            ],
            "held_out_accuracy": evaluate_classifier(stored, ids, labels),
            "held_out_majority_class": majority,
            "weights": "float16 (scored as stored, computed in float32)",
        }
        target = SHIPPED_DIR / f"sentiment-n{n}"
        save_model_dir(target, stored, ckpt.tokenizer_json, ckpt.labels, provenance)
        print(f"N={n}: {tag}, held-out {provenance['held_out_accuracy']:.4f} (fp32 weights {fp32_accuracy:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train every (N, setting) pair; copy each N's best to --out")
    t.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 5, 10])
    t.add_argument("--out", default=os.environ.get("OUT", "bench/out/demo_models"))
    t.add_argument("--scratch", default="/tmp/demo_runs")
    t.add_argument("--device", default="auto")
    t.add_argument("--batch-groups", type=int, default=32)
    t.add_argument("--max-steps", type=int, default=60000)
    t.add_argument("--patience", type=int, default=4000, help="stop when the best validation is this many steps old")
    t.add_argument("--max-seconds", type=float, default=420.0)
    t.add_argument("--warmup-steps", type=int, default=2000, help="retrieval warm-up steps of the warm settings")
    t.add_argument("--lr-warmup-steps", type=int, default=500, help="steps of linear learning-rate warm-up")
    t.add_argument("--jobs", type=int, default=12)
    s = sub.add_parser("ship", help="write muxdeploy/demo_models/ from a train step's output")
    s.add_argument("--runs", required=True)
    args = parser.parse_args()
    (train if args.step == "train" else ship)(args)


if __name__ == "__main__":
    main()
