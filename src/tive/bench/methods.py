"""The subset methods the bench compares, all at exactly the same budget.

Every method gets the same inputs (the training records' tasks and the per-record signals the TIVE run and the
reference model give) and returns the positions of exactly `budget_count(budget, n)` records, without
duplicates. Methods:

| name | task shares | records within a task |
|---|---|---|
| `random` | none (uniform over all records) | uniform |
| `random_stratified` | the input's (proportional to task size) | uniform |
| `tive` | TIVE's (proportional to mean gradient norm) | TIVE's (sample ~ exp(value / T), project defaults) |
| `tive_task_only` | TIVE's | uniform |
| `tive_instance_only` | the input's | TIVE's |
| `tive_diverse` | TIVE's | `--choose diverse` (value-weighted k-center on the gradient features; beyond the paper) |
| `grad_norm` | none | highest gradient norm first (a global difficulty ranking) |
| `el2n` | none | highest EL2N first (Paul et al. 2021: error of the reference model's predictions) |
| `length` | none | longest answers first (Zhao et al. 2024, "Long is more for alignment") |
| `grad_norm_balanced`, `el2n_balanced`, `length_balanced` | the input's | the same scores, highest first within each task |
| `clusters` | none: equal shares of k-means clusters of the gradient features (capped by their size) | uniform |
| `tive_lastk` | TIVE's, from features of the last decoder layer's LoRA matrices only (`--layers last:1`) | TIVE's, from the same features |
| `tive_proxy` | TIVE's, from a smaller bench model (half the width, its own prior and captions) | TIVE's, from the same |
| `clean_oracle` (control) | the input's | uniform over the records without a known defect |
| `task_oracle` (control) | the input's, none for the known-skill and trap tasks | uniform |

The two oracles are positive controls of a world with known defects (`tive.bench.defects`): they read the world's
ground truth, which no real method sees, and prove that the world can reward selection.

`clusters` is a COINCIDE-style baseline (Lee et al. 2024: cluster a small reference model's features, sample across
clusters rather than by task): k-means (k = √n, at most 100) on the reference model's reduced gradient features.

Only numpy is imported: methods are unit-tested without torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tive.errors import TiveError
from tive.select import DEFAULT_METHOD, DEFAULT_TEMPERATURE, budget_count, select_records, split_budget

FULL = "full"


@dataclass
class Signals:
    """Per-record inputs of the methods, one entry per training record (in the training file's order).

    Attributes:
        tasks: the task of each record.
        grad_norms: the norm of the record's LoRA gradient under the reference model (TIVE's features stage).
        values: TIVE's instance value (mean in-task cosine of the projected gradients).
        task_values: TIVE's task values (mean gradient norm per task).
        el2n: mean over answer tokens of ||softmax(logits) - onehot(label)||_2 under the reference model.
        answer_tokens: the number of answer tokens of the record.
        choose: TIVE's instance choice (`sample`, `top` or `diverse`), the project's default unless overridden.
        temperature: TIVE's sampling temperature, the project's default unless overridden.
        features: the reference model's gradient features reduced for `diverse` (`tive.select.reduce_features`),
            one unit row per record; None where no method needs them.
        exclude_tasks: tasks TIVE never selects from (the authors excluded their caption task); the budget is
            spread over the others.
        defective: the world's ground truth, True for a record with a known defect (the oracles only); None
            where the world has no ground truth (your own data).
        oracle_skip_tasks: the known-skill and trap tasks of the ground truth, which `task_oracle` skips.
        variants: method -> the signals of TIVE run another way (`VARIANTS`: e.g. `tive_lastk`'s features of the
            last layer only), computed only when the plan holds the method.
    """

    tasks: list[str]
    grad_norms: np.ndarray
    values: np.ndarray
    task_values: dict[str, float]
    el2n: np.ndarray
    answer_tokens: np.ndarray
    choose: str = DEFAULT_METHOD
    temperature: float = DEFAULT_TEMPERATURE
    features: np.ndarray | None = None
    exclude_tasks: tuple[str, ...] = ()
    defective: np.ndarray | None = None
    oracle_skip_tasks: tuple[str, ...] = ()
    variants: dict[str, "Signals"] = field(default_factory=dict)
    task_sizes: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.tasks)
        for name in ("grad_norms", "values", "el2n", "answer_tokens"):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.shape != (n,):
                raise TiveError(f"signal {name} has shape {array.shape}; expected one value per record ({n})")
            setattr(self, name, array)
        if self.features is not None and len(self.features) != n:
            raise TiveError(f"features have {len(self.features)} rows; expected one per record ({n})")
        if self.defective is not None:
            self.defective = np.asarray(self.defective, dtype=bool)
            if self.defective.shape != (n,):
                raise TiveError(f"the ground truth has {self.defective.shape} entries; expected one per record ({n})")
        self.task_sizes = dict(sorted(Counter(self.tasks).items()))


def _positions(counts: np.ndarray) -> np.ndarray:
    if counts.max(initial=0) > 1:
        raise TiveError("a method chose a record twice; subsets must not repeat records")
    return np.flatnonzero(counts > 0)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores (ties: lower position first)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def m_random(s: Signals, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(len(s.tasks), size=k, replace=False))


def _proportional_values(s: Signals) -> dict[str, float]:
    # Shares proportional to the task's size: n_t = k * size_t / N (largest remainder, exact).
    return {task: float(size) for task, size in s.task_sizes.items()}


def m_random_stratified(s: Signals, k: int, seed: int) -> np.ndarray:
    counts, _ = select_records(s.tasks, np.zeros(len(s.tasks)), _proportional_values(s), k, method="sample",
                               temperature=1.0, seed=seed)
    return _positions(counts)


def _need_features(s: Signals, method: str) -> np.ndarray:
    if s.features is None:
        raise TiveError(f"method {method} needs the reference model's gradient features")
    return s.features


def m_tive(s: Signals, k: int, seed: int) -> np.ndarray:
    features = _need_features(s, "tive") if s.choose == "diverse" else None
    counts, _ = select_records(s.tasks, s.values, s.task_values, k, method=s.choose, temperature=s.temperature,
                               seed=seed, features=features, exclude_tasks=s.exclude_tasks)
    return _positions(counts)


def m_tive_diverse(s: Signals, k: int, seed: int) -> np.ndarray:
    counts, _ = select_records(s.tasks, s.values, s.task_values, k, method="diverse", temperature=s.temperature,
                               seed=seed, features=_need_features(s, "tive_diverse"))
    return _positions(counts)


def m_tive_task_only(s: Signals, k: int, seed: int) -> np.ndarray:
    # Zero instance values: Gumbel-top-k over equal keys is uniform sampling without replacement.
    counts, _ = select_records(s.tasks, np.zeros(len(s.tasks)), s.task_values, k, method="sample", temperature=1.0,
                               seed=seed)
    return _positions(counts)


def m_tive_instance_only(s: Signals, k: int, seed: int) -> np.ndarray:
    counts, _ = select_records(s.tasks, s.values, _proportional_values(s), k, method=s.choose,
                               temperature=s.temperature, seed=seed)
    return _positions(counts)


def m_grad_norm(s: Signals, k: int, seed: int) -> np.ndarray:
    return _top(s.grad_norms, k)


def m_el2n(s: Signals, k: int, seed: int) -> np.ndarray:
    return _top(s.el2n, k)


def m_length(s: Signals, k: int, seed: int) -> np.ndarray:
    return _top(s.answer_tokens, k)


def _balanced_top(s: Signals, scores: np.ndarray, k: int) -> np.ndarray:
    """The input's task shares, the highest `scores` first within each task."""
    counts, _ = select_records(s.tasks, scores, _proportional_values(s), k, method="top", temperature=1.0)
    return _positions(counts)


def m_grad_norm_balanced(s: Signals, k: int, seed: int) -> np.ndarray:
    return _balanced_top(s, s.grad_norms, k)


def m_el2n_balanced(s: Signals, k: int, seed: int) -> np.ndarray:
    return _balanced_top(s, s.el2n, k)


def m_length_balanced(s: Signals, k: int, seed: int) -> np.ndarray:
    return _balanced_top(s, s.answer_tokens, k)


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster labels of unit rows by spherical k-means (k-means++ seeding from `seed`, cosine assignment), iterated
    until no label changes (at most `iterations` times)."""
    rng = np.random.default_rng(seed)
    n = len(points)
    centres = [points[int(rng.integers(n))]]
    distance = 2 - 2 * points @ centres[0]
    for _ in range(1, k):
        weights = np.clip(distance, 0, None)
        chosen = int(rng.choice(n, p=weights / weights.sum())) if weights.sum() > 0 else int(rng.integers(n))
        centres.append(points[chosen])
        distance = np.minimum(distance, 2 - 2 * points @ points[chosen])
    centre_matrix = np.stack(centres)
    labels = np.argmax(points @ centre_matrix.T, axis=1)
    for _ in range(iterations):
        for c in range(k):
            members = points[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                centre_matrix[c] = mean / max(np.linalg.norm(mean), 1e-12)
        updated = np.argmax(points @ centre_matrix.T, axis=1)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return labels


def m_clusters(s: Signals, k: int, seed: int) -> np.ndarray:
    points = _need_features(s, "clusters")
    n_clusters = int(min(100, max(2, round(len(points) ** 0.5))))
    labels = [f"c{label:03d}" for label in kmeans(points, n_clusters, seed)]
    equal = {label: 1.0 for label in set(labels)}
    counts, _ = select_records(labels, np.zeros(len(labels)), equal, k, method="sample", temperature=1.0, seed=seed)
    return _positions(counts)


def _need_truth(s: Signals, method: str) -> np.ndarray:
    if s.defective is None:
        raise TiveError(f"method {method} is a control of the built-in world's defect worlds: it needs the world's "
                        "ground truth (world/defects.json), which your own data does not have")
    return s.defective


def m_clean_oracle(s: Signals, k: int, seed: int) -> np.ndarray:
    """The input's task shares, uniform over the records without a known defect (a task short of clean records
    gives its leftover to the others)."""
    clean = np.flatnonzero(~_need_truth(s, "clean_oracle"))
    tasks = [s.tasks[int(i)] for i in clean]
    shares = {task: float(s.task_sizes[task]) for task in set(tasks)}
    counts, _ = select_records(tasks, np.zeros(len(tasks)), shares, k, method="sample", temperature=1.0, seed=seed)
    return np.sort(clean[_positions(counts)])


def m_task_oracle(s: Signals, k: int, seed: int) -> np.ndarray:
    """No budget for the known-skill and trap tasks, the input's shares for the rest, uniform within a task."""
    _need_truth(s, "task_oracle")
    shares = {task: 0.0 if task in s.oracle_skip_tasks else float(size) for task, size in s.task_sizes.items()}
    counts, _ = select_records(s.tasks, np.zeros(len(s.tasks)), shares, k, method="sample", temperature=1.0,
                               seed=seed)
    return _positions(counts)


def m_tive_lastk(s: Signals, k: int, seed: int) -> np.ndarray:
    return m_tive(_variant(s, "tive_lastk"), k, seed)


def _variant(s: Signals, method: str) -> Signals:
    if method not in s.variants:
        settings = ", ".join([*(f"{k} {v}" for k, v in VARIANTS[method][1].items()),
                              *([f"the {VARIANT_BASES[method]} base model"] if method in VARIANT_BASES else [])])
        raise TiveError(f"method {method} needs the signals of TIVE run with {settings}; the bench computes them when "
                        "the plan holds the method")
    return s.variants[method]


def m_tive_proxy(s: Signals, k: int, seed: int) -> np.ndarray:
    return m_tive(_variant(s, "tive_proxy"), k, seed)


VARIANTS: dict[str, tuple[str, dict[str, str]]] = {"tive_lastk": ("tive", {"layers": "last:1"}),
                                                   "tive_proxy": ("tive", {})}
"""Methods that are TIVE run another way: method -> (the method applied, the selection settings that differ)."""
VARIANT_BASES = {"tive_proxy": "proxy"}
"""Variants whose reference model is another bench model (`slots.SLOT_SIZES`), with its own prior and captions."""

CONTROLS = ("clean_oracle", "task_oracle")
"""Methods that read the world's ground truth: they run only in a world with known defects."""

METHODS: dict[str, Callable[[Signals, int, int], np.ndarray]] = {
    "random": m_random,
    "random_stratified": m_random_stratified,
    "tive": m_tive,
    "tive_task_only": m_tive_task_only,
    "tive_instance_only": m_tive_instance_only,
    "tive_diverse": m_tive_diverse,
    "grad_norm": m_grad_norm,
    "el2n": m_el2n,
    "length": m_length,
    "grad_norm_balanced": m_grad_norm_balanced,
    "el2n_balanced": m_el2n_balanced,
    "length_balanced": m_length_balanced,
    "clusters": m_clusters,
    "tive_lastk": m_tive_lastk,
    "tive_proxy": m_tive_proxy,
    "clean_oracle": m_clean_oracle,
    "task_oracle": m_task_oracle,
}


def choose_subset(method: str, signals: Signals, budget: float, seed: int) -> np.ndarray:
    """Positions (sorted) of the records `method` picks at `budget` (a fraction) with `seed`."""
    if method not in METHODS:
        raise TiveError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    k = budget_count(float(budget), len(signals.tasks))
    chosen = METHODS[method](signals, k, seed)
    if len(chosen) != k or len(set(chosen.tolist())) != k:
        raise TiveError(f"method {method} chose {len(chosen)} records instead of {k}")  # a bug, not user input
    return chosen


ALLOCATIONS = {
    "norm": "mean gradient norm (the paper's)",
    "sqnorm": "mean squared gradient norm",
    "sum": "sum of gradient norms (mean norm x task size)",
    "size": "task size (the input's shares)",
    "mix": "half the paper's share plus half the input's share",
    "floor": "the paper's shares, each raised to at least half the input's share, then rescaled",
}
"""Task-share rules for the sweep (`benchmarks/bench_tive_variants.py`): each gives task values that
`split_budget` turns into budgets in proportion."""


def allocation_values(s: Signals, rule: str) -> dict[str, float]:
    """Task values under allocation `rule` (see `ALLOCATIONS`), computed from the signals' per-record norms."""
    tasks = np.array(s.tasks)
    norms = {t: s.grad_norms[tasks == t] for t in s.task_sizes}
    total = sum(s.task_sizes.values())
    paper = {t: float(v.mean()) for t, v in norms.items()}
    paper_sum = sum(paper.values())
    size_share = {t: n / total for t, n in s.task_sizes.items()}
    if rule == "norm":
        return paper
    if rule == "sqnorm":
        return {t: float((v ** 2).mean()) for t, v in norms.items()}
    if rule == "sum":
        return {t: float(v.sum()) for t, v in norms.items()}
    if rule == "size":
        return {t: float(n) for t, n in s.task_sizes.items()}
    if rule == "mix":
        return {t: 0.5 * paper[t] / paper_sum + 0.5 * size_share[t] for t in paper}
    if rule == "floor":
        return {t: max(paper[t] / paper_sum, 0.5 * size_share[t]) for t in paper}
    raise TiveError(f"unknown allocation {rule!r}; choose from {', '.join(ALLOCATIONS)}")


def task_shares(signals: Signals, positions: Sequence[int]) -> dict[str, int]:
    """How many of the chosen records each task got."""
    counts = Counter(signals.tasks[int(p)] for p in positions)
    return {task: counts.get(task, 0) for task in signals.task_sizes}


__all__ = ["ALLOCATIONS", "CONTROLS", "FULL", "VARIANTS", "VARIANT_BASES", "METHODS", "allocation_values", "Signals", "choose_subset", "task_shares",
           "split_budget"]
