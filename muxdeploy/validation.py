"""Accuracy of a deployed bundle vs its PyTorch checkpoint on labelled data, overall and per slot.

Both sides run through `MuxRuntime.predict`, i.e. through the one packer (`muxdeploy.runtimes.packing`): the
deployed side on the bundle's backend, the reference side on the checkpoint's PyTorch module wrapped
in `muxdeploy.runtimes.backends.torch_ref.TorchBackend`. Instances are packed in file order, so instance i sits
in slot i mod N of group i // N on both sides (the runtime's FIFO packing).

Data (JSONL, one labelled instance a line):
  classification:        {"text": "...", "label": "pos"}  or  {"input_ids": [...], "label": 1}
  token classification:  {"input_ids": [...], "labels": [...]}   one label per id (null or -100: not scored)
                         {"tokens": ["word", ...], "tags": ["B-person", ...]}   words, tokenized with the
                         bundle's tokenizer; the first sub-token of each word carries its tag
Labels are label names (from the manifest) or integer ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError
from muxdeploy.core.manifest import Manifest

IGNORE = -100
CLASSIFICATION = ("sequence_classification", "image_classification", "classification")
TOKEN = "token_classification"


@dataclass
class LabelledData:
    """Instances (as the runtime takes them), gold labels and the source line of each."""

    instances: list[Any]
    gold: list[Any]  # int per instance (classification) or int array per instance (token tasks)
    lines: list[int]


@dataclass
class SideResult:
    """One side's predictions: label ids (int per instance, or an array per instance) and logits."""

    name: str
    label_ids: list[Any]
    logits: list[np.ndarray]


@dataclass
class ValidationReport:
    """Everything `muxdeploy validate` prints."""

    bundle: str
    data: str
    checkpoint: str
    task: str
    num_instances: int
    seq_len: int
    count: int
    runtime_backend: str
    reference_backend: str
    metric: str
    runtime: dict[str, float | None]
    reference: dict[str, float | None]
    agreement: float
    differing: int
    max_abs_logit_diff: float
    slots: list[dict[str, Any]] = field(default_factory=list)
    # classification: mean share of each full group's instances that carry its most common gold label,
    # in file order and (expected) in a shuffled order; None for token tasks or N=1
    group_label_share: float | None = None
    shuffled_label_share: float | None = None

    @property
    def label_sorted(self) -> bool:
        """True when the file's order packs same-label instances together far more than a shuffle would."""
        a, b = self.group_label_share, self.shuffled_label_share
        return a is not None and b is not None and a > b + 0.1

    @property
    def drop(self) -> float | None:
        """Reference minus runtime on the main metric (positive: the deployed model is worse)."""
        a, b = self.reference.get(self.metric), self.runtime.get(self.metric)
        return None if a is None or b is None else a - b

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints)."""
        return {
            "bundle": self.bundle,
            "data": self.data,
            "checkpoint": self.checkpoint,
            "task": self.task,
            "num_instances": self.num_instances,
            "seq_len": self.seq_len,
            "instances": self.count,
            "runtime_backend": self.runtime_backend,
            "reference_backend": self.reference_backend,
            "metric": self.metric,
            "runtime": self.runtime,
            "reference": self.reference,
            "drop": self.drop,
            "agreement": self.agreement,
            "differing": self.differing,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "slots": self.slots,
            "group_label_share": self.group_label_share,
            "shuffled_label_share": self.shuffled_label_share,
            "label_sorted": self.label_sorted,
        }


# ---- data ------------------------------------------------------------------------------------------
def _label_id(value: Any, names: dict[str, int] | None, where: str) -> int:
    """An integer label id from an id or a label name."""
    if isinstance(value, bool):
        raise UserInputError(f"{where}: label {value!r} is a boolean; use a label name or an integer id")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if names is None:
            raise UserInputError(f"{where}: label {value!r} is a name but the bundle has no label names; use ids")
        if value not in names:
            raise UserInputError(f"{where}: unknown label {value!r}; the bundle's labels are {', '.join(names)}")
        return names[value]
    raise UserInputError(f"{where}: label {value!r} is neither a label name nor an integer id")


def _token_labels(values: Any, names: dict[str, int] | None, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise UserInputError(f"{where}: token labels must be a list, one per token")
    return np.array(
        [IGNORE if v is None or v == IGNORE else _label_id(v, names, where) for v in values], dtype=np.int64
    )


def read_labelled(
    path: str | Path, manifest: Manifest, tokenizer: Any = None, limit: int | None = None
) -> LabelledData:
    """Parse a labelled JSONL file for the bundle's task; any bad line is a one-line UserInputError."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}; pass a JSONL file of labelled instances with --data")
    task = manifest.task
    if task not in (*CLASSIFICATION, TOKEN):
        raise UserInputError(
            f"validate scores classification and token-classification bundles; {manifest.bundle} is a {task} model"
        )
    labels = manifest.labels
    names = {name: i for i, name in enumerate(labels)} if labels else None
    num_labels = len(labels) if labels else None
    instances: list[Any] = []
    gold: list[Any] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise UserInputError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise UserInputError(f"{where}: expected a JSON object with text/input_ids and a label")
            if task == TOKEN:
                inst, tags = _token_line(obj, names, tokenizer, where)
                if num_labels is not None and tags.size and tags.max() >= num_labels:
                    raise UserInputError(
                        f"{where}: label id {int(tags.max())} is outside the bundle's {num_labels} labels"
                    )
                gold.append(tags)
            else:
                inst = _instance(obj, where)
                if "label" not in obj:
                    raise UserInputError(f'{where}: no "label"; each line needs the gold label')
                label = _label_id(obj["label"], names, where)
                if num_labels is not None and not 0 <= label < num_labels:
                    raise UserInputError(f"{where}: label id {label} is outside the bundle's {num_labels} labels")
                gold.append(label)
            instances.append(inst)
            lines.append(lineno)
            if limit is not None and len(instances) >= limit:
                break
    if not instances:
        raise UserInputError(f"{path} has no instances; write one JSON object per line")
    return LabelledData(instances, gold, lines)


def _instance(obj: dict[str, Any], where: str) -> Any:
    for key in ("input_ids", "text", "image"):
        if key in obj:
            return obj[key]
    raise UserInputError(f'{where}: no "text", "input_ids" or "image" field')


def _token_line(
    obj: dict[str, Any], names: dict[str, int] | None, tokenizer: Any, where: str
) -> tuple[Any, np.ndarray]:
    tags = obj.get("labels", obj.get("tags"))
    if tags is None:
        raise UserInputError(f'{where}: no "labels" (or "tags"); token classification needs one label per token')
    if "input_ids" in obj:
        ids = obj["input_ids"]
        gold = _token_labels(tags, names, where)
        if not isinstance(ids, list) or len(ids) != len(gold):
            n_ids = len(ids) if isinstance(ids, list) else "no"
            raise UserInputError(f"{where}: {n_ids} input_ids but {len(gold)} labels; give one label per id")
        return ids, gold
    if "tokens" in obj:
        words = obj["tokens"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise UserInputError(f'{where}: "tokens" must be a list of words (strings)')
        if len(words) != len(tags):
            raise UserInputError(f"{where}: {len(words)} tokens but {len(tags)} tags; give one tag per word")
        if tokenizer is None:
            raise UserInputError(
                f'{where}: "tokens" need the bundle\'s tokenizer, and this bundle has none; give input_ids'
            )
        word_tags = _token_labels(tags, names, where)
        enc = tokenizer.encode(words, is_pretokenized=True)
        gold = np.full(len(enc.ids), IGNORE, dtype=np.int64)
        seen: set[int] = set()
        for pos, word in enumerate(enc.word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                gold[pos] = word_tags[word]
        return list(enc.ids), gold
    if "text" in obj:
        raise UserInputError(f'{where}: token labels need "input_ids" or pre-split "tokens", not raw "text"')
    raise UserInputError(f'{where}: no "input_ids" or "tokens" field')


# ---- running ---------------------------------------------------------------------------------------
def run_side(runtime: Any, instances: Sequence[Any], name: str, progress: bool = True) -> SideResult:
    """Predict all instances in chunks of whole groups (so packing equals one predict over the whole list)."""
    from tqdm import tqdm

    chunk = runtime.max_batch * runtime.num_instances * 4
    label_ids: list[Any] = []
    logits: list[np.ndarray] = []
    with tqdm(total=len(instances), desc=name, unit="inst", disable=not progress, leave=False) as bar:
        for start in range(0, len(instances), chunk):
            for r in runtime.predict(instances[start : start + chunk]):
                label_ids.append(r["label_id"] if "label_id" in r else np.asarray(r["label_ids"]))
                logits.append(np.asarray(r["logits"], dtype=np.float32))
            bar.update(min(chunk, len(instances) - start))
    return SideResult(name, label_ids, logits)


def reference_runtime(bundle: str | Path, checkpoint: str | Path, manifest: Manifest) -> Any:
    """A MuxRuntime running the checkpoint's PyTorch module (CPU, fp32) through the same packer."""
    from muxdeploy.checkpoint import load_checkpoint
    from muxdeploy.runtimes.backends.base import TensorSpec
    from muxdeploy.runtimes.backends.torch_ref import TorchBackend
    from muxdeploy.runtimes.runtime import MuxRuntime

    ckpt = load_checkpoint(checkpoint, seq_len=manifest.seq_len)
    if ckpt.config.num_instances != manifest.num_instances:
        raise UserInputError(
            f"checkpoint {checkpoint} has N={ckpt.config.num_instances} but bundle {bundle} has "
            f"N={manifest.num_instances}; pass the checkpoint the bundle was exported from"
        )
    if ckpt.config.task != manifest.task:
        raise UserInputError(
            f"checkpoint {checkpoint} is a {ckpt.config.task} model, bundle {bundle} a {manifest.task}"
        )
    inp = TensorSpec.from_manifest(manifest.data["inputs"][0])
    out = TensorSpec.from_manifest(manifest.data["outputs"][0])
    model = ckpt.model.eval()
    return MuxRuntime(bundle, backend=lambda: TorchBackend(model, inp, out, manifest.max_batch))


def default_checkpoint(manifest: Manifest) -> Path:
    """The manifest's model.source, resolved against the working directory, then the bundle's parent."""
    source = str((manifest.data.get("model") or {}).get("source") or "")
    if not source:
        raise UserInputError(f"{manifest.bundle}'s manifest names no source checkpoint; pass --checkpoint ckpt.pt")
    candidates = [Path(source)]
    if manifest.bundle is not None and not Path(source).is_absolute():
        candidates.append(manifest.bundle.parent / source)
    for c in candidates:
        if c.exists():
            return c
    raise UserInputError(f"the manifest's source checkpoint {source} was not found; pass --checkpoint ckpt.pt")


# ---- metrics ---------------------------------------------------------------------------------------
def entity_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans of BIO/IOB2 tags; an I- without a matching open entity starts one (CoNLL)."""
    spans: set[tuple[int, int, str]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ and start >= 0
        if start >= 0 and not continues:
            spans.add((start, i, kind))
            start, kind = -1, ""
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, typ
    return spans


def is_bio(labels: Sequence[str] | None) -> bool:
    """True when label names look like BIO tags (O, B-x, I-x)."""
    return bool(labels) and all(name == "O" or name[:2] in ("B-", "I-") for name in labels)


def _f1(tp: int, n_pred: int, n_gold: int) -> float | None:
    if n_pred + n_gold == 0:
        return None
    return 2 * tp / (n_pred + n_gold)


def classification_scores(gold: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """Accuracy of predicted label ids."""
    return {"accuracy": float(np.mean(gold == pred)) if gold.size else None}


def token_scores(
    gold: Sequence[np.ndarray], pred: Sequence[np.ndarray], labels: Sequence[str] | None
) -> dict[str, float | None]:
    """Token accuracy over scored positions and, for BIO labels, entity-span micro F1."""
    right = total = tp = n_pred = n_gold = 0
    bio = is_bio(labels)
    for g, p in zip(gold, pred, strict=True):
        keep = g[: len(p)] != IGNORE
        g_kept, p_kept = g[: len(p)][keep], p[keep]
        right += int(np.sum(g_kept == p_kept))
        total += int(keep.sum())
        if bio:
            gs = entity_spans([labels[i] for i in g_kept])
            ps = entity_spans([labels[i] for i in p_kept])
            tp, n_pred, n_gold = tp + len(gs & ps), n_pred + len(ps), n_gold + len(gs)
    return {"token_accuracy": right / total if total else None, "entity_f1": _f1(tp, n_pred, n_gold) if bio else None}


def compare(
    data: LabelledData, runtime: SideResult, reference: SideResult, task: str, n: int, labels: Sequence[str] | None
) -> dict[str, Any]:
    """Scores of both sides, agreement, max logit difference and the per-slot table."""
    m = len(data.gold)
    slot = np.arange(m) % n
    if task == TOKEN:
        metric = "entity_f1" if is_bio(labels) else "token_accuracy"

        def score(idx: np.ndarray, side: SideResult) -> dict[str, float | None]:
            return token_scores([data.gold[i] for i in idx], [side.label_ids[i] for i in idx], labels)

        same = [
            (r[: len(g)] == f[: len(g)])[g[: len(r)] != IGNORE]
            for r, f, g in zip(runtime.label_ids, reference.label_ids, data.gold, strict=True)
        ]
        agree_n = sum(int(s.sum()) for s in same)
        agree_total = sum(s.size for s in same)
        differing = sum(int((~s).any()) for s in same)
    else:
        metric = "accuracy"
        gold = np.asarray(data.gold)
        rt_ids, ref_ids = np.asarray(runtime.label_ids), np.asarray(reference.label_ids)

        def score(idx: np.ndarray, side: SideResult) -> dict[str, float | None]:
            ids = rt_ids if side is runtime else ref_ids
            return classification_scores(gold[idx], ids[idx])

        agree_n, agree_total = int(np.sum(rt_ids == ref_ids)), m
        differing = m - agree_n
    everyone = np.arange(m)
    diff = max(
        (float(np.max(np.abs(a - b))) for a, b in zip(runtime.logits, reference.logits, strict=True) if a.size),
        default=0.0,
    )
    slots = []
    for s in range(n):
        idx = everyone[slot == s]
        rt, ref = score(idx, runtime), score(idx, reference)
        slots.append({"slot": s, "count": int(idx.size), "runtime": rt[metric], "reference": ref[metric]})
    return {
        "metric": metric,
        "runtime": score(everyone, runtime),
        "reference": score(everyone, reference),
        "agreement": agree_n / agree_total if agree_total else 1.0,
        "differing": differing,
        "max_abs_logit_diff": diff,
        "slots": slots,
    }


def group_label_share(gold: np.ndarray, n: int, shuffle_seed: int | None = None) -> float | None:
    """Mean share of a full group's N instances that carry the group's most common label (None if no full group).

    High values mean the data is sorted by label: a muxed model then sees label-pure groups and its
    accuracy is inflated (the group's mixed representation alone gives the answer).
    """
    gold = np.asarray(gold)
    if n < 2 or gold.size < n:
        return None
    if shuffle_seed is not None:
        gold = np.random.default_rng(shuffle_seed).permutation(gold)
    groups = gold[: gold.size // n * n].reshape(-1, n)
    counts = [np.unique(g, return_counts=True)[1].max() for g in groups]
    return float(np.mean(counts)) / n


def validate(
    bundle: str | Path,
    data_path: str | Path,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Run labelled data through the bundle's runtime and through the PyTorch checkpoint; compare them."""
    from muxdeploy.runtimes.runtime import MuxRuntime

    manifest = Manifest.load(bundle)
    ckpt_path = Path(checkpoint) if checkpoint else default_checkpoint(manifest)
    # Everything that can fail on bad input (data, checkpoint, backend) fails before any long run.
    with reference_runtime(bundle, ckpt_path, manifest) as ref_rt:
        data = read_labelled(data_path, manifest, ref_rt.encoder.tokenizer, limit)
        enc = ref_rt.encoder.encode(data.instances)
        if enc.errors:
            i = min(enc.errors)
            raise UserInputError(f"{data_path} line {data.lines[i]}: instance {enc.errors[i]}")
        with MuxRuntime(bundle, backend=backend, precision=precision) as rt:
            deployed = run_side(rt, data.instances, "runtime", progress)
            runtime_name = rt.backend_name
        reference = run_side(ref_rt, data.instances, "pytorch", progress)
    scores = compare(data, deployed, reference, manifest.task, manifest.num_instances, manifest.labels)
    if manifest.task != TOKEN:
        scores["group_label_share"] = group_label_share(np.asarray(data.gold), manifest.num_instances)
        scores["shuffled_label_share"] = group_label_share(np.asarray(data.gold), manifest.num_instances, 0)
    return ValidationReport(
        bundle=str(bundle),
        data=str(data_path),
        checkpoint=str(ckpt_path),
        task=manifest.task,
        num_instances=manifest.num_instances,
        seq_len=manifest.seq_len,
        count=len(data.instances),
        runtime_backend=runtime_name,
        reference_backend="pytorch fp32 cpu",
        **scores,
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_report(report: ValidationReport) -> str:
    """The human-readable table `muxdeploy validate` prints."""
    m = report.metric
    lines = [
        f"validated {report.count:,} instances of {report.data} on {report.bundle} "
        f"({report.task}, N={report.num_instances}, L={report.seq_len})",
        f"runtime:   {report.runtime_backend}",
        f"reference: {report.reference_backend} ({report.checkpoint})",
        "",
        f"{'':12}{'runtime':>10}{'pytorch':>10}",
    ]
    for key in report.runtime:
        if report.runtime[key] is None and report.reference[key] is None:
            continue
        lines.append(f"{key:12}{_fmt(report.runtime[key]):>10}{_fmt(report.reference[key]):>10}")
    drop = report.drop
    lines += [
        f"drop ({m}): {'-' if drop is None else f'{drop:+.4f} ({drop * 100:+.2f} points)'}",
        f"agreement:  {report.agreement:.4f} ({report.differing:,} of {report.count:,} instances differ)",
        f"max |logit diff|: {report.max_abs_logit_diff:.3g}",
    ]
    if report.label_sorted:
        lines.append(
            f"warning: --data is sorted by label: {report.group_label_share:.0%} of each group of "
            f"{report.num_instances} shares one label (shuffled: {report.shuffled_label_share:.0%}), which inflates "
            "muxed accuracy; shuffle the file (e.g. shuf) and validate again"
        )
    lines += [
        "",
        f"per slot ({m}; slot = position in its group of N, FIFO packing):",
        f"{'slot':>4}{'count':>8}{'runtime':>10}{'pytorch':>10}",
    ]
    for row in report.slots:
        lines.append(f"{row['slot']:>4}{row['count']:>8}{_fmt(row['runtime']):>10}{_fmt(row['reference']):>10}")
    return "\n".join(lines)
