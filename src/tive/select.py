"""Budget split over tasks and instance choice within each task.

TIVE gives each task a share of the selection budget proportional to its value (mean gradient norm), then
chooses that many records inside the task, favouring records with high instance values.

Where this differs from the authors' code, on purpose:

- The budget is met exactly: shares are rounded by largest remainder, not truncated with ``int()``.
- No duplicates by default: a task whose share is at least its size takes all its records and its leftover
  goes to the other tasks in proportion to their values (water-filling). ``oversample=True`` restores the
  authors' behaviour (uncapped shares; a task repeated as a whole, then the rest chosen).
- A fraction budget is a fraction of the records *eligible* for selection (status ok, task not excluded);
  the authors counted excluded tasks in N.
- Every random choice derives from one explicit seed.

Only numpy and the standard library are imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from fractions import Fraction

import numpy as np

from tive.errors import TiveError

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TEMPERATURE",
    "AUTHORS_TEMPERATURE",
    "METHODS",
    "parse_budget",
    "budget_count",
    "split_budget",
    "largest_remainder",
    "choose_instances",
    "choose_diverse",
    "reduce_features",
    "select_records",
    "authors_budgets",
    "AUTHORS_EXCLUDED_TASK",
]

METHODS: tuple[str, ...] = ("sample", "top", "diverse")
"""Instance-choice methods: ``sample`` (temperature-weighted, without replacement), ``top``, and ``diverse``
(value-weighted k-center on the gradient features: representative records that are not near-duplicates)."""

DIVERSE_DIM = 256
"""The dimension the gradient features are reduced to for ``diverse`` (a seeded Gaussian projection of the
unit-normalised rows): cosines are kept to about ±0.06, and the greedy costs O(n · 256 · budget), not
O(n · 8192 · budget)."""

DIVERSE_ROUNDS = 256
"""``diverse`` picks a task's records in at most this many rounds, each one matrix product over the task's records
(exact greedy within each round's best candidates), so a 665K-record mix is chosen in seconds, not hours."""

DEFAULT_METHOD = "sample"
"""The paper's method: sample within each task, favouring representative records."""

DEFAULT_TEMPERATURE = 0.1
"""Provisional default temperature for ``sample``.

Instance values are cosines in [-1, 1]; at 0.1 a record whose value is 0.3 higher than another's is
e^3 ≈ 20 times likelier to be drawn first. To be revisited once the benchmark has compared settings.
"""

AUTHORS_TEMPERATURE = 1000.0
"""The authors' setting: they sample with softmax(q · s), q = 0.001, i.e. temperature 1/q = 1000, which with
values in [-1, 1] is practically uniform random sampling within each task."""

AUTHORS_EXCLUDED_TASK = "textcaps"
"""The task the authors leave out of the selection (its images were seen in pre-training); it stays in the warm-up."""

_BUDGET_FORMS = (
    "a fraction in (0, 1] such as 0.15, a percentage in (0%, 100%] such as 15%, "
    "or a whole number of records such as 1500"
)
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_budget(text: str) -> float | int:
    """Parse a budget given on the command line or in a config.

    An integer literal is a count of records; anything with a decimal point or a ``%`` is a fraction. So
    ``"1"`` is one record and ``"1.0"`` (or ``"100%"``) is everything eligible.

    Args:
        text: ``"0.15"`` or ``"15%"`` (fraction 0.15), or ``"1500"`` (1500 records).

    Returns:
        A float fraction in (0, 1] or an int count >= 1.

    Raises:
        TiveError: for any other text, saying which forms are accepted.
    """
    raw = str(text).strip()
    bad = TiveError(f"budget {text!r} is not valid; give {_BUDGET_FORMS}")
    if _INTEGER.fullmatch(raw):
        count = int(raw)
        if count < 1:
            raise bad
        return count
    percent = raw.endswith("%")
    number = raw[:-1].strip() if percent else raw
    try:
        fraction = float(number)
    except ValueError:
        raise bad from None
    if percent:
        fraction /= 100.0
    if not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise bad
    return fraction


def budget_count(budget: float | int, n_eligible: int) -> int:
    """Turn a parsed budget into a number of records.

    A fraction is of the records eligible for selection (status ok, task not excluded). That is deliberate:
    the authors' code counted excluded tasks in N, so its subsets were larger than the stated fraction of
    what could actually be chosen. Fractions are rounded half up, and give at least one record.

    Args:
        budget: a fraction in (0, 1] (float) or a count >= 1 (int), as from :func:`parse_budget`.
        n_eligible: the number of eligible records.

    Returns:
        The number of records to select. A count is returned as given even if it exceeds ``n_eligible``;
        :func:`split_budget` refuses that unless oversampling.

    Raises:
        TiveError: if the budget is out of range or there are no eligible records.
    """
    if isinstance(n_eligible, bool) or not isinstance(n_eligible, (int, np.integer)) or n_eligible < 0:
        raise TiveError(f"the number of eligible records must be a non-negative integer, got {n_eligible!r}")
    if n_eligible == 0:
        raise TiveError("no records are eligible for selection (all failed or all in excluded tasks)")
    if isinstance(budget, bool):
        raise TiveError(f"budget {budget!r} is not valid; give {_BUDGET_FORMS}")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise TiveError(f"budget {budget!r} is not valid; give {_BUDGET_FORMS}")
        return int(budget)
    if isinstance(budget, (float, np.floating)) and math.isfinite(budget) and 0.0 < budget <= 1.0:
        return max(1, math.floor(float(budget) * int(n_eligible) + 0.5))
    raise TiveError(f"budget {budget!r} is not valid; give {_BUDGET_FORMS}")


def largest_remainder(shares: Mapping[str, Fraction], total: int) -> dict[str, int]:
    """Round exact shares that sum to ``total`` to integers that sum to ``total``.

    Each share is floored; the units still missing go one each to the largest fractional parts, ties
    broken by task name. Because the shares are exact, the missing units never exceed the number of
    shares with a fractional part, so no share is rounded up by more than its fraction.
    """
    counts = {name: math.floor(share) for name, share in shares.items()}
    missing = total - sum(counts.values())
    by_remainder = sorted(shares, key=lambda name: (-(shares[name] - counts[name]), name))
    for name in by_remainder[:missing]:
        counts[name] += 1
    return counts


def _check_split_inputs(
    task_values: Mapping[str, float], task_sizes: Mapping[str, int], total: int
) -> tuple[dict[str, Fraction], dict[str, int]]:
    """Validate :func:`split_budget`'s inputs and convert values to exact fractions."""
    if set(task_values) != set(task_sizes):
        only_values = sorted(set(task_values) - set(task_sizes))
        only_sizes = sorted(set(task_sizes) - set(task_values))
        raise TiveError(
            "task values and task sizes must name the same tasks; "
            f"only in values: {only_values}, only in sizes: {only_sizes}"
        )
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
        raise TiveError(f"the total budget must be a non-negative integer, got {total!r}")
    values: dict[str, Fraction] = {}
    sizes: dict[str, int] = {}
    for name in sorted(task_values):
        value = task_values[name]
        try:
            value_f = float(value)
        except (TypeError, ValueError):
            raise TiveError(f"task {name!r} has value {value!r}; task values must be numbers") from None
        if not math.isfinite(value_f) or value_f < 0:
            raise TiveError(f"task {name!r} has value {value!r}; task values must be finite and non-negative")
        size = task_sizes[name]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise TiveError(f"task {name!r} has size {size!r}; task sizes must be non-negative integers")
        values[name] = Fraction(value_f)
        sizes[name] = int(size)
    if sum(values.values()) == 0:
        raise TiveError(
            f"all task values are zero (tasks: {sorted(values)}); the budget cannot be split by value. "
            "Check the gradient norms"
        )
    return values, sizes


def split_budget(
    task_values: Mapping[str, float],
    task_sizes: Mapping[str, int],
    total: int,
    oversample: bool = False,
) -> dict[str, int]:
    """Split ``total`` records over tasks in proportion to their values, exactly.

    Task t's share is ``total * v_t / Σ_u v_u``. Without ``oversample``, a task whose share is at least its
    size takes all its records and its leftover is spread over the other tasks in proportion to their
    values, repeatedly, until no task is saturated (water-filling: n_t = min(size_t, λ·v_t) with λ chosen so
    the shares sum to ``total``). The unsaturated shares are then rounded by largest remainder (ties by
    task name), so the budgets sum to ``total`` exactly and never exceed a task's size. Tasks with value 0
    get nothing unless the other tasks cannot absorb the total; then the rest is spread over them by their
    size (their remaining capacity).

    With ``oversample`` the shares are rounded by largest remainder with no cap, as the authors did: a task
    may get more than its size, and its records will be repeated. Tasks with no records never get a budget
    in either mode. All arithmetic is exact (rational), so the result does not depend on float rounding.

    Args:
        task_values: task -> value (mean gradient norm), finite and non-negative.
        task_sizes: task -> number of eligible records; the same tasks as ``task_values``.
        total: the number of records to select.
        oversample: allow budgets beyond a task's size (and a total beyond all records).

    Returns:
        task -> number of records to select, in sorted task order, summing to ``total``.

    Raises:
        TiveError: on mismatched task sets, negative or non-finite values, all-zero values, a negative
            total, or (without ``oversample``) a total larger than the number of records.
    """
    values, sizes = _check_split_inputs(task_values, task_sizes, total)
    total = int(total)
    budgets = {name: 0 for name in values}
    # Tasks without records cannot give anything; leaving them out keeps their value from diluting λ.
    live = [name for name in values if sizes[name] > 0]
    if total == 0:
        return budgets
    if not live:
        raise TiveError("no task has any eligible record; nothing can be selected")
    if sum(values[name] for name in live) == 0:
        raise TiveError(
            f"every task with eligible records has value zero (tasks: {live}); the budget cannot be split "
            "by value. Check the gradient norms"
        )

    if oversample:
        value_sum = sum(values[name] for name in live)
        shares = {name: Fraction(total) * values[name] / value_sum for name in live}
        budgets.update(largest_remainder(shares, total))
        return budgets

    capacity = sum(sizes[name] for name in live)
    if total > capacity:
        raise TiveError(
            f"the budget of {total} records is more than the {capacity} eligible records; "
            f"choose at most {capacity}, or pass --oversample to repeat records"
        )

    # Water-filling in one pass: a task saturates iff size_t / v_t <= λ = remaining / Σ v (unsaturated),
    # and saturating a task can only raise λ, so tasks are visited by increasing size / value.
    positive = sorted((name for name in live if values[name] > 0), key=lambda n: (sizes[n] / values[n], n))
    remaining = Fraction(total)
    value_sum = sum(values[name] for name in positive)
    unsaturated = list(positive)
    for name in positive:
        if sizes[name] * value_sum <= remaining * values[name]:
            budgets[name] = sizes[name]
            remaining -= sizes[name]
            value_sum -= values[name]
            unsaturated.remove(name)
        else:
            break

    if unsaturated:
        shares = {name: remaining * values[name] / value_sum for name in unsaturated}
    else:
        # Every task with a positive value is full; the zero-value tasks absorb the rest by capacity.
        zero = [name for name in live if values[name] == 0]
        zero_capacity = sum(sizes[name] for name in zero)
        shares = {name: remaining * sizes[name] / zero_capacity for name in zero} if remaining else {}
    budgets.update(largest_remainder(shares, int(remaining)))
    return budgets


def _check_method(method: str, temperature: float) -> float:
    """Validate an instance-choice method and temperature; return the temperature as a float."""
    if method not in METHODS:
        raise TiveError(f"unknown instance-choice method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        temperature_f = float(temperature)
    except (TypeError, ValueError):
        raise TiveError(f"temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(temperature_f) or temperature_f <= 0:
        raise TiveError(f"temperature must be a positive finite number, got {temperature!r}")
    return temperature_f


def choose_instances(
    values: np.ndarray,
    n: int,
    method: str,
    temperature: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Choose ``n`` records of one task by their instance values.

    ``top`` takes the ``n`` highest values (ties: lower index first) and ignores ``rng``. ``sample`` draws
    ``n`` records without replacement, each draw with probability ∝ exp(value / temperature) among the
    records not yet drawn. It uses the Gumbel-top-k trick (keys = value / temperature + Gumbel noise, keep
    the ``n`` largest), which has exactly the distribution of that sequential sampling and never
    exponentiates, so it is stable for any temperature (1e-3 behaves like ``top``, 1e3 like uniform). The
    authors' softmax(q · s) with q = 0.001 is temperature 1000 (see :data:`AUTHORS_TEMPERATURE`).

    If ``n`` exceeds the number of records (oversampling, which the caller allows only on request), every
    record is taken ``n // len(values)`` times and the remaining ``n % len(values)`` are chosen by the method.

    Args:
        values: the instance values of the task's records, one-dimensional and finite.
        n: how many records to choose.
        method: ``"sample"`` or ``"top"``.
        temperature: the sampling temperature, > 0 (checked for ``top`` too, so a bad setting is caught
            whichever method runs).
        rng: the generator ``sample`` draws from.

    Returns:
        int64 array, same length as ``values``: how many times each record is selected.

    Raises:
        TiveError: on an unknown method, a temperature <= 0, non-finite values, a negative ``n``, ``n > 0``
            with no records, or values / temperature overflowing.
    """
    temperature_f = _check_method(method, temperature)
    if method == "diverse":
        raise TiveError("choose_instances does sample and top; diverse needs the features: choose_diverse")
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 1:
        raise TiveError(f"instance values must be one-dimensional, got shape {vals.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise TiveError(f"the number of records to choose must be a non-negative integer, got {n!r}")
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise TiveError(f"instance value at position {int(bad[0])} is {vals[bad[0]]!r}; values must be finite")
    m = vals.shape[0]
    counts = np.zeros(m, dtype=np.int64)
    if n == 0:
        return counts
    if m == 0:
        raise TiveError(f"cannot choose {n} records from a task with no records")
    repeats, rest = divmod(int(n), m)
    counts += repeats
    if rest == 0:
        return counts
    if method == "top":
        keys = vals
    else:
        with np.errstate(over="ignore"):
            scaled = vals / temperature_f
        if not np.isfinite(scaled).all():
            raise TiveError(
                f"temperature {temperature!r} is too small for these instance values (value / temperature "
                "overflows); use a larger temperature, or method 'top'"
            )
        keys = scaled + rng.gumbel(size=m)
    # A stable sort of -keys puts equal keys in index order, which is the documented tie rule for 'top'.
    chosen = np.argsort(-keys, kind="stable")[:rest]
    counts[chosen] += 1
    return counts


def reduce_features(features: np.ndarray, dim: int = DIVERSE_DIM, seed: int = 0,
                    block_rows: int = 4096) -> np.ndarray:
    """Unit rows of `features` (n × d, any float dtype, e.g. a memory-mapped store) projected to `dim` seeded
    Gaussian directions and normalised again: the geometry ``diverse`` works in, read in blocks of rows.

    Rows of zero length stay zero. With d ≤ `dim` the rows are only normalised.
    """
    n, d = features.shape
    out = np.zeros((n, min(dim, d)), dtype=np.float32)
    matrix = None
    if d > dim:
        matrix = np.random.default_rng(seed).standard_normal((d, dim), dtype=np.float32)
    for start in range(0, n, block_rows):
        block = np.asarray(features[start : start + block_rows], dtype=np.float32)
        if matrix is not None:
            block = block @ matrix
        lengths = np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block / np.where(lengths > 0, lengths, 1.0)
    return out


def choose_diverse(points: np.ndarray, values: np.ndarray, n: int, temperature: float) -> np.ndarray:
    """Choose ``n`` records of one task that cover its gradient directions, favouring representative ones.

    Value-weighted greedy k-center: the first pick is the highest-valued record; each next pick maximises
    ``distance to the nearest pick × exp((value − max value) / temperature)``, distance being the squared
    Euclidean distance between unit rows (2 − 2 cos). A near-duplicate of a pick has distance ~0 and is not taken
    until the task's other directions are; among records equally far from the picks, the more representative
    (higher instance value) wins — strongly at a small temperature, not at all at a large one.

    Large tasks are done in at most :data:`DIVERSE_ROUNDS` rounds: each round takes the best 4k candidates by the
    current priority, picks k of them greedily (exact updates among the candidates), then updates every record's
    distance with one matrix product. Deterministic (ties: lower index first); no random numbers.

    Args:
        points: the task's records in the reduced feature space (:func:`reduce_features`), one unit row each.
        values: their instance values.
        n: how many to choose (more than the task's size: every record repeated, the rest chosen as above).
        temperature: > 0.

    Returns:
        int64 array, one count per record.
    """
    vals = np.asarray(values, dtype=np.float64)
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[0] != vals.shape[0]:
        raise TiveError(f"diverse: {vals.shape[0]} instance values but features of shape {points.shape}")
    m = vals.shape[0]
    counts = np.zeros(m, dtype=np.int64)
    if n == 0:
        return counts
    if m == 0:
        raise TiveError(f"cannot choose {n} records from a task with no records")
    repeats, rest = divmod(int(n), m)
    counts += repeats
    if rest == 0:
        return counts
    weight = np.exp((vals - vals.max()) / temperature)
    distance = np.full(m, 4.0, dtype=np.float64)  # squared distance between unit vectors is at most 4
    taken = np.zeros(m, dtype=bool)

    def take(picks: list[int]) -> None:
        taken[picks] = True
        counts[picks] += 1
        similarity = points @ points[picks].T  # m × k, one matrix product per round
        np.minimum(distance, 2.0 - 2.0 * similarity.max(axis=1).astype(np.float64), out=distance)

    first = int(np.argsort(-vals, kind="stable")[0])
    take([first])
    per_round = max(1, math.ceil((rest - 1) / DIVERSE_ROUNDS))
    while taken.sum() < rest:
        k = min(per_round, rest - int(taken.sum()))
        priority = np.where(taken, -1.0, distance * weight)
        wanted = min(4 * k, m - int(taken.sum()))
        best = np.argpartition(-priority, wanted - 1)[:wanted] if wanted < m else np.arange(m)
        candidates = best[np.lexsort((best, -priority[best]))][:wanted]  # by priority, ties by index
        local, local_weight, local_points = distance[candidates].copy(), weight[candidates], points[candidates]
        chosen_here = np.zeros(len(candidates), dtype=bool)
        picks = []
        for _ in range(k):
            j = int(np.argmax(np.where(chosen_here, -1.0, local * local_weight)))
            chosen_here[j] = True
            picks.append(int(candidates[j]))
            np.minimum(local, 2.0 - 2.0 * (local_points @ local_points[j]).astype(np.float64), out=local)
        take(picks)
    return counts


def select_records(
    tasks: Sequence[str],
    values: np.ndarray,
    task_values: Mapping[str, float],
    total: int,
    *,
    method: str = DEFAULT_METHOD,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    oversample: bool = False,
    exclude_tasks: Collection[str] = (),
    budgets: Mapping[str, int] | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Select ``total`` records: split the budget over tasks, then choose instances within each.

    The caller passes only the eligible rows (status ok). Excluded tasks are removed first; the budget is
    split over the remaining tasks by their values and sizes (:func:`split_budget`), then each task's
    records are chosen by :func:`choose_instances`. One ``np.random.default_rng(seed)`` is used for all
    tasks, visited in sorted-name order, so the same inputs and seed always give the same subset.

    Args:
        tasks: the task of each row.
        values: the instance value of each row.
        task_values: task -> task value; must cover every task that is not excluded (other keys are
            ignored).
        total: the number of records to select (see :func:`budget_count`).
        method: ``"sample"`` or ``"top"``.
        temperature: the sampling temperature for ``sample``.
        seed: the seed of the one generator all random choices come from.
        oversample: allow a task's budget beyond its size, repeating its records (the authors' behaviour).
        exclude_tasks: tasks that are never selected (the authors exclude TextCaps).
        budgets: the per-task sizes, when they are decided elsewhere (`authors_budgets`); ``total`` is then
            their sum.
        features: for ``diverse``, each row's reduced gradient features (:func:`reduce_features`).

    Returns:
        (how many times each row is selected, int64; task -> budget, for every task in ``tasks``, sorted,
        excluded tasks with 0).

    Raises:
        TiveError: on mismatched lengths, an excluded name that is not a task, a missing task value, every
            task excluded, or any error of :func:`split_budget` or :func:`choose_instances`.
    """
    _check_method(method, temperature)
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 1 or vals.shape[0] != len(tasks):
        raise TiveError(
            f"got {len(tasks)} task names but instance values of shape {vals.shape}; "
            "pass one value per row, in the same order"
        )
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        row = int(bad[0])
        raise TiveError(
            f"instance value of row {row} (task {str(tasks[row])!r}) is {vals[row]!r}; values must be finite"
        )
    task_names = sorted({str(t) for t in tasks})
    unknown = sorted({str(t) for t in exclude_tasks} - set(task_names))
    if unknown:
        raise TiveError(f"cannot exclude {unknown}: not a task of these records. The tasks are: {task_names}")
    excluded = {str(t) for t in exclude_tasks}
    kept = [name for name in task_names if name not in excluded]
    if not kept:
        raise TiveError(f"every task is excluded ({task_names}); nothing is left to select from")
    missing = [name for name in kept if name not in task_values]
    if missing:
        raise TiveError(f"no task value for task(s) {missing}; compute task values for every selected task")

    position = {name: i for i, name in enumerate(task_names)}
    ids = np.fromiter((position[str(t)] for t in tasks), dtype=np.int64, count=len(tasks))
    sizes_all = np.bincount(ids, minlength=len(task_names))
    sizes = {name: int(sizes_all[position[name]]) for name in kept}
    if budgets is None:
        budgets = split_budget({name: task_values[name] for name in kept}, sizes, total, oversample=oversample)
    else:
        budgets = {name: int(budgets.get(name, 0)) for name in kept}
        if not oversample and any(budgets[name] > sizes[name] for name in kept):
            raise TiveError("a task's budget exceeds its size; pass oversample=True to repeat its records")

    if method == "diverse" and (features is None or len(features) != len(tasks)):
        raise TiveError("--choose diverse needs the gradient features of every row (features/features.npy)")
    counts = np.zeros(len(tasks), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for name in kept:
        rows = np.flatnonzero(ids == position[name])
        if method == "diverse":
            counts[rows] = choose_diverse(features[rows], vals[rows], budgets[name], temperature)
        else:
            counts[rows] = choose_instances(vals[rows], budgets[name], method, temperature, rng)
    return counts, {name: (budgets[name] if name in budgets else 0) for name in task_names}


def authors_budgets(
    task_values: Mapping[str, float], task_sizes: Mapping[str, int], fraction: float, n_records: int
) -> dict[str, int]:
    """The per-task subset sizes of the authors' released selection script, reproduced exactly.

    Task t (excluded tasks are not passed) gets ``x_t = v_t / Σ_u v_u · p · N`` with N *all* records, excluded
    tasks included. If ``x_t`` is below the task's size its budget is ``int(x_t)`` (truncated, so the subset is
    usually a few records short of p · N); otherwise the task is repeated ``int(x_t // size)`` times and
    ``int(x_t % size)`` more records are drawn. Float arithmetic as theirs (not exact fractions).

    Args:
        task_values: task → value (mean gradient norm) of the tasks that are selected from.
        task_sizes: task → its number of records.
        fraction: p.
        n_records: N, every record including those of excluded tasks.

    Returns:
        task → number of records to choose (repeats included), in sorted task order.
    """
    total_value = sum(float(task_values[name]) for name in task_values)
    if not total_value > 0:
        raise TiveError("all task values are zero; the budget cannot be split by value. Check the gradient norms")
    budgets = {}
    for name in sorted(task_values):
        share = float(task_values[name]) / total_value * (fraction * n_records)
        size = int(task_sizes[name])
        if share < size:
            budgets[name] = int(share)
        else:
            budgets[name] = int(share // size) * size + int(share % size)
    return budgets
