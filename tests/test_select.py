"""Tests for tive.select: budget parsing, exact budget split, instance choice, whole selection."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from tive.errors import TiveError
from tive.select import (
    AUTHORS_TEMPERATURE,
    DEFAULT_METHOD,
    DEFAULT_TEMPERATURE,
    budget_count,
    choose_instances,
    parse_budget,
    select_records,
    split_budget,
)

# ---------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.15", 0.15), ("15%", 0.15), (" 15 % ", 0.15), ("100%", 1.0), ("1.0", 1.0), ("1500", 1500), ("1", 1)],
)
def test_parse_budget_accepts(text: str, expected: float | int) -> None:
    result = parse_budget(text)
    assert result == pytest.approx(expected)
    assert type(result) is type(expected)


@pytest.mark.parametrize("text", ["0", "-3", "0.0", "1.5", "150%", "0%", "abc", "", "nan", "inf", "15%%", "-0.1"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(TiveError, match="fraction"):
        parse_budget(text)


def test_budget_count() -> None:
    assert budget_count(0.15, 1000) == 150
    assert budget_count(0.15, 10) == 2  # 1.5 rounds half up
    assert budget_count(0.001, 10) == 1  # at least one record
    assert budget_count(1.0, 7) == 7
    assert budget_count(1500, 10) == 1500  # a count is returned as given
    with pytest.raises(TiveError):
        budget_count(0.5, 0)
    with pytest.raises(TiveError):
        budget_count(0, 10)
    with pytest.raises(TiveError):
        budget_count(1.5, 10)


# ------------------------------------------------------------------------------------------ split_budget


def _water_filling_reference(values: dict[str, float], sizes: dict[str, int], total: int) -> dict[str, float]:
    """Real-valued shares by the iterative definition: saturate, redistribute, repeat."""
    shares = {name: 0.0 for name in values}
    active = [name for name in values if sizes[name] > 0]
    remaining = float(total)
    while active:
        value_sum = sum(values[name] for name in active)
        proposal = {name: remaining * values[name] / value_sum for name in active}
        full = [name for name in active if proposal[name] >= sizes[name]]
        if not full:
            shares.update(proposal)
            break
        for name in full:
            shares[name] = float(sizes[name])
            remaining -= sizes[name]
            active.remove(name)
    return shares


def test_split_budget_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        n_tasks = int(rng.integers(1, 9))
        names = [f"task{i}" for i in range(n_tasks)]
        sizes = {name: int(rng.integers(1, 200)) for name in names}
        # Heavy-tailed values so saturation happens often.
        values = {name: float(rng.lognormal(0.0, 1.5)) for name in names}
        total = int(rng.integers(0, sum(sizes.values()) + 1))
        budgets = split_budget(values, sizes, total)
        assert list(budgets) == sorted(names)
        assert sum(budgets.values()) == total
        reference = _water_filling_reference(values, sizes, total)
        for name in names:
            assert 0 <= budgets[name] <= sizes[name]
            assert abs(budgets[name] - reference[name]) < 1 + 1e-9
            if reference[name] >= sizes[name]:
                assert budgets[name] == sizes[name]


def test_split_budget_proportional_without_saturation() -> None:
    budgets = split_budget({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, {"a": 100, "b": 100, "c": 100, "d": 100}, 100)
    assert budgets == {"a": 10, "b": 20, "c": 30, "d": 40}


def test_split_budget_saturated_leftover_in_proportion() -> None:
    # Shares 60 / 30 / 10 of 100; "big" holds only 20, so its 40 leftover goes 3:1 to the others.
    budgets = split_budget({"big": 6.0, "mid": 3.0, "small": 1.0}, {"big": 20, "mid": 500, "small": 500}, 100)
    assert budgets == {"big": 20, "mid": 60, "small": 20}


def test_split_budget_largest_remainder_and_ties() -> None:
    # Shares 10/3 each: floors 3+3+3, one unit left, ties broken by name.
    assert split_budget({"b": 1.0, "a": 1.0, "c": 1.0}, {"a": 9, "b": 9, "c": 9}, 10) == {"a": 4, "b": 3, "c": 3}
    # Shares 1.6 / 1.4 / 7.0 (int() truncation would give 1 + 1 + 7 = 9).
    assert split_budget({"x": 1.6, "y": 1.4, "z": 7.0}, {"x": 9, "y": 9, "z": 9}, 10) == {"x": 2, "y": 1, "z": 7}


def test_split_budget_zero_value_tasks() -> None:
    values = {"hard": 5.0, "free": 0.0, "free2": 0.0}
    sizes = {"hard": 4, "free": 30, "free2": 10}
    assert split_budget(values, sizes, 3) == {"free": 0, "free2": 0, "hard": 3}
    # "hard" is full at 4; the other 16 go to the zero-value tasks by size, 3:1.
    assert split_budget(values, sizes, 20) == {"free": 12, "free2": 4, "hard": 4}


def test_split_budget_total_all_and_zero() -> None:
    values = {"a": 1.0, "b": 9.0}
    sizes = {"a": 5, "b": 3}
    assert split_budget(values, sizes, 8) == {"a": 5, "b": 3}
    assert split_budget(values, sizes, 0) == {"a": 0, "b": 0}


def test_split_budget_over_capacity_raises() -> None:
    with pytest.raises(TiveError, match=r"at most 8.*--oversample"):
        split_budget({"a": 1.0, "b": 9.0}, {"a": 5, "b": 3}, 9)


def test_split_budget_oversample_is_uncapped_rounding() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        names = [f"t{i}" for i in range(int(rng.integers(1, 7)))]
        sizes = {name: int(rng.integers(1, 50)) for name in names}
        values = {name: float(rng.lognormal(0.0, 1.0)) for name in names}
        total = int(rng.integers(0, 3 * sum(sizes.values())))
        budgets = split_budget(values, sizes, total, oversample=True)
        assert sum(budgets.values()) == total
        value_sum = sum(values.values())
        for name in names:
            assert abs(budgets[name] - total * values[name] / value_sum) < 1 + 1e-9
    # The saturated case: uncapped, "big" gets more than its 20 records.
    budgets = split_budget({"big": 6.0, "mid": 3.0, "small": 1.0}, {"big": 20, "mid": 500, "small": 500}, 100, True)
    assert budgets == {"big": 60, "mid": 30, "small": 10}


def test_split_budget_bad_inputs() -> None:
    with pytest.raises(TiveError, match="non-negative"):
        split_budget({"a": -1.0, "b": 1.0}, {"a": 1, "b": 1}, 1)
    with pytest.raises(TiveError, match="finite"):
        split_budget({"a": math.nan}, {"a": 1}, 1)
    with pytest.raises(TiveError, match="finite"):
        split_budget({"a": math.inf}, {"a": 1}, 1)
    with pytest.raises(TiveError, match="zero"):
        split_budget({"a": 0.0, "b": 0.0}, {"a": 1, "b": 1}, 1)
    with pytest.raises(TiveError, match="same tasks"):
        split_budget({"a": 1.0}, {"b": 1}, 1)


# -------------------------------------------------------------------------------------- choose_instances


def test_choose_top_picks_highest_with_index_ties() -> None:
    values = np.array([0.1, 0.9, 0.5, 0.9, -0.2, 0.5])
    counts = choose_instances(values, 3, "top", 1.0, np.random.default_rng(0))
    assert counts.dtype == np.int64
    assert counts.tolist() == [0, 1, 1, 1, 0, 0]  # 0.9, 0.9, then the first 0.5
    assert choose_instances(values, 0, "top", 1.0, np.random.default_rng(0)).tolist() == [0] * 6


def test_choose_sample_no_duplicates_and_exact_count() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, size=50)
    for n in (1, 7, 49, 50):
        counts = choose_instances(values, n, "sample", 0.1, rng)
        assert counts.sum() == n
        assert counts.max() <= 1


def test_choose_sample_low_temperature_equals_top() -> None:
    rng = np.random.default_rng(3)
    values = rng.permutation(200) / 200.0
    top = choose_instances(values, 20, "top", 1.0, rng)
    for seed in range(5):
        sample = choose_instances(values, 20, "sample", 1e-6, np.random.default_rng(seed))
        assert sample.tolist() == top.tolist()


def test_choose_sample_high_temperature_is_uniform() -> None:
    values = np.array([1.0, -1.0, 0.5, 0.0, -0.5])
    draws = 5000
    hits = np.zeros(5)
    rng = np.random.default_rng(7)
    for _ in range(draws):
        hits += choose_instances(values, 1, "sample", AUTHORS_TEMPERATURE, rng)
    expected = draws / 5
    chi_square = float(((hits - expected) ** 2 / expected).sum())
    assert chi_square < 30.0  # 4 degrees of freedom: p(chi2 > 30) < 1e-5


def test_choose_sample_matches_softmax_and_sequential_sampling() -> None:
    values = np.array([0.8, 0.3, -0.4, 0.1])
    temperature = 0.5
    weights = np.exp(values / temperature)
    p = weights / weights.sum()
    draws = 20000
    first = np.zeros(4)
    pairs = np.zeros(4)
    for seed in range(draws):
        first += choose_instances(values, 1, "sample", temperature, np.random.default_rng(seed))
        pairs += choose_instances(values, 2, "sample", temperature, np.random.default_rng(draws + seed))
    np.testing.assert_allclose(first / draws, p, atol=0.015)
    # Inclusion probability of each record in two sequential draws without replacement.
    inclusion = np.zeros(4)
    for i, j in permutations(range(4), 2):
        prob = p[i] * p[j] / (1 - p[i])
        inclusion[i] += prob
        inclusion[j] += prob
    np.testing.assert_allclose(pairs / draws, inclusion, atol=0.015)


def test_choose_sample_seeded() -> None:
    values = np.random.default_rng(0).uniform(-1, 1, size=100)
    a = choose_instances(values, 10, "sample", 0.1, np.random.default_rng(42))
    b = choose_instances(values, 10, "sample", 0.1, np.random.default_rng(42))
    c = choose_instances(values, 10, "sample", 0.1, np.random.default_rng(43))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_choose_oversample_repeats_then_chooses_rest() -> None:
    values = np.array([0.1, 0.7, 0.3])
    counts = choose_instances(values, 8, "top", 1.0, np.random.default_rng(0))
    assert counts.tolist() == [2, 3, 3]
    counts = choose_instances(values, 7, "sample", 0.1, np.random.default_rng(0))
    assert counts.sum() == 7 and counts.min() == 2 and counts.max() == 3


def test_choose_extreme_temperatures_are_stable() -> None:
    values = np.array([1.0, -1.0, 0.99, 0.0])
    counts = choose_instances(values, 2, "sample", 1e-3, np.random.default_rng(0))
    assert counts.tolist() == [1, 0, 1, 0]
    counts = choose_instances(values, 2, "sample", 1e3, np.random.default_rng(0))
    assert counts.sum() == 2


def test_choose_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    values = np.array([0.1, 0.2])
    with pytest.raises(TiveError, match="temperature"):
        choose_instances(values, 1, "sample", 0.0, rng)
    with pytest.raises(TiveError, match="temperature"):
        choose_instances(values, 1, "sample", -1.0, rng)
    with pytest.raises(TiveError, match="sample, top"):
        choose_instances(values, 1, "best", 1.0, rng)
    with pytest.raises(TiveError, match="finite"):
        choose_instances(np.array([0.1, np.nan]), 1, "top", 1.0, rng)
    with pytest.raises(TiveError, match="no records"):
        choose_instances(np.array([]), 1, "top", 1.0, rng)


# ---------------------------------------------------------------------------------------- select_records


def _dataset(seed: int = 0) -> tuple[list[str], np.ndarray, dict[str, float]]:
    rng = np.random.default_rng(seed)
    sizes = {"caps": 40, "chat": 120, "ocr": 30, "vqa": 200}
    tasks = [name for name, size in sizes.items() for _ in range(size)]
    rng.shuffle(tasks)
    values = rng.uniform(-1, 1, size=len(tasks))
    task_vals = {"caps": 2.0, "chat": 1.0, "ocr": 4.0, "vqa": 1.5}
    return tasks, values, task_vals


def test_select_records_exact_total_and_budgets() -> None:
    tasks, values, task_vals = _dataset()
    counts, budgets = select_records(tasks, values, task_vals, 100, seed=1)
    assert counts.dtype == np.int64 and counts.shape == (len(tasks),)
    assert counts.sum() == 100 and counts.max() == 1
    assert sum(budgets.values()) == 100
    assert budgets == split_budget(task_vals, {"caps": 40, "chat": 120, "ocr": 30, "vqa": 200}, 100)
    tasks_arr = np.array(tasks)
    for name, budget in budgets.items():
        assert counts[tasks_arr == name].sum() == budget


def test_select_records_exclude_moves_budget() -> None:
    tasks, values, task_vals = _dataset()
    counts, budgets = select_records(tasks, values, task_vals, 100, exclude_tasks=["caps"], seed=1)
    tasks_arr = np.array(tasks)
    assert budgets["caps"] == 0
    assert counts[tasks_arr == "caps"].sum() == 0
    assert counts.sum() == 100
    rest = {"chat": 1.0, "ocr": 4.0, "vqa": 1.5}
    assert {k: v for k, v in budgets.items() if k != "caps"} == split_budget(
        rest, {"chat": 120, "ocr": 30, "vqa": 200}, 100
    )
    with pytest.raises(TiveError, match=r"not a task.*caps"):
        select_records(tasks, values, task_vals, 10, exclude_tasks=["textcaps"])
    with pytest.raises(TiveError, match="excluded"):
        select_records(tasks, values, task_vals, 10, exclude_tasks=["caps", "chat", "ocr", "vqa"])


def test_select_records_reproducible() -> None:
    tasks, values, task_vals = _dataset()
    a, _ = select_records(tasks, values, task_vals, 80, seed=5)
    b, _ = select_records(tasks, values, task_vals, 80, seed=5)
    c, _ = select_records(tasks, values, task_vals, 80, seed=6)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    top1, _ = select_records(tasks, values, task_vals, 80, method="top", seed=5)
    top2, _ = select_records(tasks, values, task_vals, 80, method="top", seed=6)
    assert top1.tolist() == top2.tolist()


def test_select_records_oversample() -> None:
    tasks, values, task_vals = _dataset()
    n = len(tasks)
    with pytest.raises(TiveError, match="--oversample"):
        select_records(tasks, values, task_vals, n + 10)
    counts, budgets = select_records(tasks, values, task_vals, n + 10, oversample=True)
    assert counts.sum() == n + 10
    assert counts.max() >= 2
    assert sum(budgets.values()) == n + 10
    # Uncapped: ocr (value 4 of 8.5) is asked for more than its 30 records and repeats them.
    assert budgets["ocr"] > 30
    assert counts[np.array(tasks) == "ocr"].min() >= 1


def test_select_records_bad_inputs() -> None:
    tasks, values, task_vals = _dataset()
    with pytest.raises(TiveError, match="one value per row"):
        select_records(tasks, values[:-1], task_vals, 10)
    with pytest.raises(TiveError, match="no task value"):
        select_records(tasks, values, {"caps": 1.0}, 10)
    with pytest.raises(TiveError, match="temperature"):
        select_records(tasks, values, task_vals, 10, temperature=0)


def test_defaults() -> None:
    assert DEFAULT_METHOD == "sample"
    assert DEFAULT_TEMPERATURE == 0.1
    assert AUTHORS_TEMPERATURE == 1000.0


# ---------------------------------------------------------------------------------------------- diverse
def _clusters(rng: np.random.Generator, sizes: list[int], dim: int = 32, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around random centres (one cluster per size) and the cluster of each row."""
    centres = rng.standard_normal((len(sizes), dim))
    label = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[label] + spread * rng.standard_normal((len(label), dim))
    return points / np.linalg.norm(points, axis=1, keepdims=True), label


def _instance_values(points: np.ndarray) -> np.ndarray:
    mean = points.mean(axis=0)
    return points @ mean  # mean cosine with the task (unit rows), self included


def _greedy_reference(points: np.ndarray, values: np.ndarray, n: int, temperature: float) -> list[int]:
    """The definition, one pick at a time with every distance recomputed."""
    weight = np.exp((values - values.max()) / temperature)
    picks = [int(np.argsort(-values, kind="stable")[0])]
    distance = np.full(len(values), 4.0)
    while len(picks) < n:
        distance = np.minimum(distance, 2 - 2 * points @ points[picks[-1]])  # to the nearest pick so far
        priority = distance * weight
        priority[picks] = -1
        picks.append(int(np.argmax(priority)))
    return picks


def test_diverse_covers_every_cluster_where_value_alone_takes_the_largest() -> None:
    """A task of 400 near-duplicates and four small groups: instance value favours the duplicates (they are the
    task's typical record), `top` takes only them; `diverse` takes every group, then duplicates."""
    from tive.select import choose_diverse

    points, label = _clusters(np.random.default_rng(0), [400, 15, 15, 15, 15])
    values = _instance_values(points)
    top = choose_instances(values, 10, "top", DEFAULT_TEMPERATURE, np.random.default_rng(0))
    assert set(label[top > 0]) == {0}
    diverse = choose_diverse(points, values, 10, temperature=1.0)
    assert diverse.sum() == 10 and diverse.max() == 1
    assert set(label[diverse > 0]) == {0, 1, 2, 3, 4}
    assert int(np.flatnonzero(diverse)[np.argmax(values[diverse > 0])]) == int(np.argmax(values))  # starts at the top


def test_diverse_is_the_value_weighted_greedy_k_center() -> None:
    """Up to DIVERSE_ROUNDS picks the rounds hold one record each: exactly the greedy of the definition, at a
    temperature where values matter and one where they do not."""
    from tive.select import choose_diverse

    rng = np.random.default_rng(1)
    points, _ = _clusters(rng, [60, 40, 30, 20, 10], spread=0.3)
    values = _instance_values(points)
    for temperature in (0.05, 1e6):
        counts = choose_diverse(points, values, 40, temperature)
        assert sorted(np.flatnonzero(counts)) == sorted(_greedy_reference(points, values, 40, temperature))
    low, high = choose_diverse(points, values, 40, 0.05), choose_diverse(points, values, 40, 1e6)
    assert values[low > 0].mean() > values[high > 0].mean()  # a small temperature prefers representative records


def test_diverse_in_rounds_covers_as_well_as_the_exact_greedy() -> None:
    """Beyond DIVERSE_ROUNDS picks several records are taken per round; the covering radius (the farthest record
    from its nearest pick) stays within 15% of one-at-a-time greedy's, with no record taken twice."""
    from tive.select import DIVERSE_ROUNDS, choose_diverse

    rng = np.random.default_rng(2)
    points = rng.standard_normal((3000, 16)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    values = np.zeros(3000)
    n = 4 * DIVERSE_ROUNDS
    counts = choose_diverse(points, values, n, temperature=1.0)
    assert counts.sum() == n and counts.max() == 1

    def radius(picks: list[int] | np.ndarray) -> float:
        return float((2 - 2 * points @ points[picks].T).min(axis=1).max())

    assert radius(np.flatnonzero(counts)) <= 1.15 * radius(_greedy_reference(points, values, n, 1.0))
    again = choose_diverse(points, values, n, temperature=1.0)
    np.testing.assert_array_equal(again, counts)  # deterministic


def test_reduce_features_keeps_cosines_and_unit_length() -> None:
    from tive.select import reduce_features

    rng = np.random.default_rng(3)
    full = rng.standard_normal((200, 4096)).astype(np.float16)
    full[:100] += full[100:]  # pairs with cosine ~0.7
    reduced = reduce_features(full, dim=256, seed=0)
    assert reduced.shape == (200, 256) and reduced.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, rtol=1e-5)
    unit = full.astype(np.float64) / np.linalg.norm(full.astype(np.float64), axis=1, keepdims=True)
    error = np.abs(reduced @ reduced.T - unit @ unit.T)
    assert error.mean() < 0.06 and error.max() < 0.35
    np.testing.assert_array_equal(reduce_features(full, dim=256, seed=0), reduced)


def test_select_records_diverse_needs_features_and_meets_every_budget() -> None:
    rng = np.random.default_rng(4)
    points, label = _clusters(rng, [50, 30, 20])
    tasks = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    values = _instance_values(points)
    with pytest.raises(TiveError, match="--choose diverse needs the gradient features"):
        select_records(tasks, values, {"a": 1.0, "b": 1.0, "c": 2.0}, 20, method="diverse")
    counts, budgets = select_records(tasks, values, {"a": 1.0, "b": 1.0, "c": 2.0}, 20, method="diverse",
                                     features=points)
    assert counts.sum() == 20 and budgets == {"a": 5, "b": 5, "c": 10}
    for name, budget in budgets.items():
        assert counts[np.array(tasks) == name].sum() == budget
