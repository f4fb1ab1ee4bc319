"""Accuracy of a deployed bundle vs its PyTorch checkpoint on labelled data, overall and per slot.

Both sides run through `MuxRuntime.predict`, i.e. through the one packer (`muxdeploy.runtimes.packing`): the
deployed side on the bundle's backend, the reference side on the checkpoint's PyTorch module wrapped
in `muxdeploy.runtimes.backends.torch_ref.TorchBackend`. Instances are packed in file order, so instance i sits
in slot i mod N of group i // N on both sides (the runtime's FIFO packing). The data format is
`muxdeploy.evaluation.labelled_data`'s; the scores are `muxdeploy.evaluation.metrics`'. For classification,
`muxdeploy.evaluation.groupmates` adds what the packing does to the deployed side's answers (random and
label-mixed packing, flip rate, isolated mode). `validate_all` scores several precisions of one bundle
against one PyTorch pass; `validate` is its one-precision form.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muxdeploy.core.errors import MuxError, UserInputError
from muxdeploy.core.manifest import PRECISIONS, Manifest
from muxdeploy.evaluation.groupmates import GroupmateReport, measure_groupmates
from muxdeploy.evaluation.labelled_data import TOKEN, LabelledData, read_labelled
from muxdeploy.evaluation.metrics import IGNORE_LABEL, classification_scores, is_bio, token_scores


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
    agreement: float | None  # None: validated without the PyTorch side (reference=False)
    differing: int | None
    max_abs_logit_diff: float | None
    slots: list[dict[str, Any]] = field(default_factory=list)
    precision: str = ""
    groupmates: GroupmateReport | None = None
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
            "precision": self.precision,
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
            "groupmates": None if self.groupmates is None else self.groupmates.to_dict(),
        }


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


# ---- comparing -------------------------------------------------------------------------------------
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
            (r[: len(g)] == f[: len(g)])[g[: len(r)] != IGNORE_LABEL]
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


def runnable_precisions(manifest: Manifest, backend: str) -> list[str]:
    """Every precision of the bundle that `backend` can run here, in PRECISIONS order (fp32, fp16, int8)."""
    from muxdeploy.runtimes.backends import select

    found = []
    for p in PRECISIONS:
        try:
            select(manifest, backend, p)
        except MuxError:
            continue
        found.append(p)
    if not found:
        select(manifest, backend, "auto")  # raises the one-line reason (no artifact, backend missing)
    return found


def _no_reference(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores of `compare(data, deployed, deployed, ...)` with every PyTorch-side figure set to None."""
    scores["reference"] = {k: None for k in scores["reference"]}
    scores.update(agreement=None, differing=None, max_abs_logit_diff=None)
    for row in scores["slots"]:
        row["reference"] = None
    return scores


def validate_all(
    bundle: str | Path,
    data_path: str | Path,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    precisions: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    reference: bool = True,
    groupmates: bool = True,
) -> list[ValidationReport]:
    """Score each of `precisions` (default: every one `backend` runs here) of the bundle on labelled data.

    The PyTorch checkpoint runs once for all of them (`reference=False`: not at all; no torch needed).
    Classification bundles also get the group-mate figures (`groupmates`). Everything that can fail on bad
    input (data, checkpoint, backend, a missing artifact) fails before any long run.
    """
    from muxdeploy.runtimes.instances import InstanceEncoder
    from muxdeploy.runtimes.runtime import MuxRuntime

    manifest = Manifest.load(bundle)
    wanted = runnable_precisions(manifest, backend) if precisions is None else list(precisions)
    from muxdeploy.runtimes.backends import select

    for p in wanted:
        select(manifest, backend, p)
    ckpt_path = None
    with ExitStack() as stack:
        ref_rt = None
        if reference:
            ckpt_path = Path(checkpoint) if checkpoint else default_checkpoint(manifest)
            ref_rt = stack.enter_context(reference_runtime(bundle, ckpt_path, manifest))
        encoder = ref_rt.encoder if ref_rt is not None else InstanceEncoder(manifest)
        data = read_labelled(data_path, manifest, encoder.tokenizer, limit)
        enc = encoder.encode(data.instances)
        if enc.errors:
            i = min(enc.errors)
            raise UserInputError(f"{data_path} line {data.lines[i]}: instance {enc.errors[i]}")
        ref_side = run_side(ref_rt, data.instances, "pytorch", progress) if ref_rt is not None else None
        reports = []
        for p in wanted:
            with MuxRuntime(bundle, backend=backend, precision=p) as rt:
                deployed = run_side(rt, data.instances, f"runtime {p}", progress)
                gm = None
                if groupmates and manifest.task != TOKEN:
                    with MuxRuntime(bundle, backend=backend, precision=p, isolation="fillers") as alone:
                        gm = measure_groupmates(rt, alone, enc.ids, np.asarray(data.gold))
                name = rt.backend_name
                chosen = rt.selection.precision if rt.selection else p
            scores = compare(
                data, deployed, ref_side or deployed, manifest.task, manifest.num_instances, manifest.labels
            )
            if ref_side is None:
                scores = _no_reference(scores)
            if manifest.task != TOKEN:
                scores["group_label_share"] = group_label_share(np.asarray(data.gold), manifest.num_instances)
                scores["shuffled_label_share"] = group_label_share(np.asarray(data.gold), manifest.num_instances, 0)
            reports.append(
                ValidationReport(
                    bundle=str(bundle),
                    data=str(data_path),
                    checkpoint="" if ckpt_path is None else str(ckpt_path),
                    task=manifest.task,
                    num_instances=manifest.num_instances,
                    seq_len=manifest.seq_len,
                    count=len(data.instances),
                    runtime_backend=name,
                    reference_backend="pytorch fp32 cpu" if ref_side is not None else "none",
                    precision=chosen,
                    groupmates=gm,
                    **scores,
                )
            )
    return reports


def validate(
    bundle: str | Path,
    data_path: str | Path,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    progress: bool = True,
    groupmates: bool = True,
) -> ValidationReport:
    """Run labelled data through the bundle's runtime and through the PyTorch checkpoint; compare them."""
    return validate_all(bundle, data_path, checkpoint, backend, [precision], limit, progress, groupmates=groupmates)[0]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_report(report: ValidationReport) -> str:
    """The human-readable table `muxdeploy validate` prints."""
    m = report.metric
    ref = report.agreement is not None
    lines = [
        f"validated {report.count:,} instances of {report.data} on {report.bundle} "
        f"({report.task}, N={report.num_instances}, L={report.seq_len})",
        f"runtime:   {report.runtime_backend}",
        f"reference: {report.reference_backend} ({report.checkpoint})" if ref else "reference: none",
        "",
        f"{'':12}{'runtime':>10}{'pytorch':>10}",
    ]
    for key in report.runtime:
        if report.runtime[key] is None and report.reference[key] is None:
            continue
        lines.append(f"{key:12}{_fmt(report.runtime[key]):>10}{_fmt(report.reference[key]):>10}")
    if ref:
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
    if report.groupmates is not None:
        lines += ["", *format_groupmates(report.groupmates)]
    lines += [
        "",
        f"per slot ({m}; slot = position in its group of N, FIFO packing):",
        f"{'slot':>4}{'count':>8}{'runtime':>10}{'pytorch':>10}",
    ]
    for row in report.slots:
        lines.append(f"{row['slot']:>4}{row['count']:>8}{_fmt(row['runtime']):>10}{_fmt(row['reference']):>10}")
    return "\n".join(lines)


def format_groupmates(g: GroupmateReport) -> list[str]:
    """The group-mates block of the report: what packing does to the deployed side's answers."""
    share = "" if g.mixed_group_share is None else f" ({g.mixed_group_share:.0%} of groups hold 2+ labels)"
    return [
        f"group-mates (runtime; {g.repackings} random re-packings of the data, seed {g.seed}):",
        f"  accuracy, random packing:      {g.random_accuracy:.4f} "
        f"(min {g.random_accuracy_min:.4f}, max {g.random_accuracy_max:.4f})",
        f"  accuracy, label-mixed packing: {g.mixed_accuracy:.4f}{share}",
        f"  flip rate:                     {g.flip_rate:.2%} of instances change their answer across the re-packings",
        f"  isolated (--isolation fillers: one instance per group): accuracy {g.isolated_accuracy:.4f}, "
        f"{g.isolated_instances_per_s:,.0f} instances/s vs {g.instances_per_s:,.0f} shared",
    ]
