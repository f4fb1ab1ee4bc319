"""What a muxed prediction's group-mates do to it, measured on labelled data through the runtime.

A DataMUX model answers for N instances from one mixed representation, so an instance's prediction can
change with the N-1 instances packed beside it. Per bundle and precision this measures:
- accuracy under random packing: the mean over `REPACKINGS` random orders of the data (seeded);
- accuracy under label-mixed packing: groups that each hold instances of at least two labels (the
  demultiplexer's hardest case: the group's average carries no shortcut to the answer);
- the flip rate: the share of instances whose prediction is not the same in all the random orders;
- the isolated mode (`MuxRuntime(isolation="fillers")`: each instance alone with N-1 fillers): its accuracy
  and its instances/s (best of `ISOLATED_PASSES` passes) next to the shared packing's (best of the random
  passes), the price of an answer that does not depend on other traffic.
Rows are encoded once; each pass is `predict_array` on a permutation of them (pack, run, unpack: the
runtime's own path, tokenization excluded from the timings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

REPACKINGS = 5
ISOLATED_PASSES = 2


@dataclass
class GroupmateReport:
    """Group-mate effects of one bundle and precision on labelled data."""

    num_instances: int
    repackings: int
    seed: int
    random_accuracy: float
    random_accuracy_min: float
    random_accuracy_max: float
    mixed_accuracy: float
    mixed_group_share: float | None  # share of full groups holding >= 2 labels in the label-mixed order
    flip_rate: float
    instances_per_s: float
    isolated_accuracy: float
    isolated_instances_per_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def random_orders(m: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` seeded random permutations of range(m)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(m) for _ in range(count)]


def label_mixed_order(gold: np.ndarray, n: int, seed: int) -> np.ndarray:
    """An order of the instances in which consecutive groups of n hold as many different labels as the data allows.

    The labels are dealt round-robin (each label's instances shuffled), then each full group is shuffled so a
    label does not sit in the same slots group after group. Only the tail, once the rarer labels run out,
    can be pure.
    """
    gold = np.asarray(gold)
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(gold == c)) for c in np.unique(gold)]
    longest = max(len(q) for q in queues)
    dealt = np.full((longest, len(queues)), -1, dtype=np.int64)
    for j, q in enumerate(queues):
        dealt[: len(q), j] = q
    order = dealt.reshape(-1)
    order = order[order >= 0]
    full = order.size // n * n
    if n > 1 and full:
        order[:full] = rng.permuted(order[:full].reshape(-1, n), axis=1).reshape(-1)
    return order


def mixed_group_share(gold_in_order: np.ndarray, n: int) -> float | None:
    """Share of full groups of n (in the given order) that hold at least two different labels (None for N=1)."""
    full = gold_in_order.size // n * n
    if n < 2 or not full:
        return None
    groups = np.asarray(gold_in_order[:full]).reshape(-1, n)
    return float(np.mean(groups.min(axis=1) != groups.max(axis=1)))


def _predict(runtime: Any, rows: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, float]:
    """Label ids (in the original order) of the rows packed in `order`, and the seconds the pass took."""
    start = time.perf_counter()
    out = runtime.predict_array(rows[order])
    seconds = time.perf_counter() - start
    pred = np.empty(order.size, dtype=np.int64)
    pred[order] = out.reshape(order.size, -1).argmax(-1)
    return pred, seconds


def measure_groupmates(
    runtime: Any,
    isolated: Any,
    rows: np.ndarray,
    gold: np.ndarray,
    repackings: int = REPACKINGS,
    seed: int = 0,
) -> GroupmateReport:
    """Random-packing and label-mixed accuracy, flip rate and isolated accuracy/speed (module docstring).

    `runtime` packs as deployed (isolation "none"); `isolated` is the same bundle and precision with
    isolation "fillers". `rows`: the encoded instances [M, ...]; `gold`: label ids [M].
    """
    gold = np.asarray(gold)
    m, n = gold.size, runtime.num_instances
    # first runs allocate (buffers, the multi-batch pipeline thread): keep them out of the timings. The
    # isolated runtime runs only after the shared one is done (an onnxruntime session that just ran keeps
    # its threads spinning for a while, which would slow the other one down)
    _predict(runtime, rows, np.arange(min(m, 2 * runtime.max_batch * n)))
    preds, seconds = [], []
    for order in random_orders(m, repackings, seed):
        pred, s = _predict(runtime, rows, order)
        preds.append(pred)
        seconds.append(s)
    stacked = np.stack(preds)
    accuracies = (stacked == gold).mean(axis=1)
    mixed = label_mixed_order(gold, n, seed)
    mixed_pred, _ = _predict(runtime, rows, mixed)
    _predict(isolated, rows, np.arange(min(m, 2 * isolated.max_batch)))
    iso_pred, iso_s = _predict(isolated, rows, np.arange(m))
    for _ in range(ISOLATED_PASSES - 1):  # the same answers each time; the best time counts, as for shared
        iso_s = min(iso_s, _predict(isolated, rows, np.arange(m))[1])
    return GroupmateReport(
        num_instances=n,
        repackings=repackings,
        seed=seed,
        random_accuracy=float(accuracies.mean()),
        random_accuracy_min=float(accuracies.min()),
        random_accuracy_max=float(accuracies.max()),
        mixed_accuracy=float((mixed_pred == gold).mean()),
        mixed_group_share=mixed_group_share(gold[mixed], n),
        flip_rate=float((stacked != stacked[0]).any(axis=0).mean()),
        instances_per_s=m / min(seconds),
        isolated_accuracy=float((iso_pred == gold).mean()),
        isolated_instances_per_s=m / iso_s,
    )
