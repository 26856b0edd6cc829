"""Every method picks exactly the same number of records at a budget, without duplicates, reproducibly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tive.bench.methods import METHODS, Signals, choose_subset, task_shares
from tive.bench.model import RECIPES
from tive.bench.runner import ABLATIONS, Plan, plan_jobs
from tive.errors import TiveError
from tive.select import budget_count


def _signals(n: int = 997, seed: int = 0) -> Signals:
    rng = np.random.default_rng(seed)
    names = ["big", "mid", "small", "hard"]
    tasks = [names[i] for i in rng.choice(4, size=n, p=[0.5, 0.25, 0.15, 0.10])]
    norms = rng.gamma(2.0, 1.0, size=n) * np.array([{"big": 1, "mid": 1.5, "small": 2, "hard": 6}[t] for t in tasks])
    t_values = {t: float(norms[[i for i, x in enumerate(tasks) if x == t]].mean()) for t in names}
    centres = rng.standard_normal((12, 16))
    features = centres[rng.integers(12, size=n)] + 0.3 * rng.standard_normal((n, 16))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    signals = Signals(tasks=tasks, grad_norms=norms, values=rng.uniform(-1, 1, n), task_values=t_values,
                      el2n=rng.uniform(0, 1.4, n), answer_tokens=rng.integers(1, 60, n), features=features,
                      defective=rng.random(n) < 0.1, oracle_skip_tasks=("hard",))
    # TIVE from the last layer's features: other values and task values for the same records.
    signals.variants["tive_lastk"] = Signals(tasks=tasks, grad_norms=norms[::-1].copy(), values=rng.uniform(-1, 1, n),
                                             task_values={t: 1.0 + i for i, t in enumerate(names)},
                                             el2n=signals.el2n, answer_tokens=signals.answer_tokens)
    signals.variants["tive_proxy"] = Signals(tasks=tasks, grad_norms=norms, values=rng.uniform(-1, 1, n),
                                             task_values={t: 4.0 - i for i, t in enumerate(names)},
                                             el2n=signals.el2n, answer_tokens=signals.answer_tokens)
    return signals


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.15, 0.3])
def test_equal_budget_no_duplicates(budget: float) -> None:
    signals = _signals()
    k = budget_count(budget, len(signals.tasks))
    for method in METHODS:
        for seed in (0, 1, 2):
            chosen = choose_subset(method, signals, budget, seed)
            assert len(chosen) == k, method
            assert len(set(chosen.tolist())) == k, method
            assert chosen.min() >= 0 and chosen.max() < len(signals.tasks)


def test_reproducible_and_seeded() -> None:
    signals = _signals()
    for method in METHODS:
        a = choose_subset(method, signals, 0.15, 4)
        assert np.array_equal(a, choose_subset(method, signals, 0.15, 4))
    assert not np.array_equal(choose_subset("random", signals, 0.15, 0), choose_subset("random", signals, 0.15, 1))
    assert not np.array_equal(choose_subset("tive", signals, 0.15, 0), choose_subset("tive", signals, 0.15, 1))


def test_task_shares_follow_each_method() -> None:
    signals = _signals()
    k = budget_count(0.15, len(signals.tasks))
    proportional = {t: k * n / len(signals.tasks) for t, n in signals.task_sizes.items()}
    for method in ("random_stratified", "tive_instance_only", "grad_norm_balanced", "el2n_balanced",
                   "length_balanced"):
        shares = task_shares(signals, choose_subset(method, signals, 0.15, 0))
        assert all(abs(shares[t] - proportional[t]) <= 1 for t in shares), method
    tive_shares = task_shares(signals, choose_subset("tive", signals, 0.15, 0))
    assert tive_shares == task_shares(signals, choose_subset("tive_task_only", signals, 0.15, 0))
    assert tive_shares == task_shares(signals, choose_subset("tive_diverse", signals, 0.15, 0))
    assert tive_shares["hard"] > proportional["hard"] + 5  # the high-gradient task gets more than its share


def test_heuristics_take_the_top() -> None:
    signals = _signals()
    chosen = choose_subset("grad_norm", signals, 0.1, 0)
    assert signals.grad_norms[chosen].min() >= np.sort(signals.grad_norms)[-len(chosen)]
    chosen = choose_subset("el2n", signals, 0.1, 0)
    assert signals.el2n[chosen].min() >= np.sort(signals.el2n)[-len(chosen)]


def test_plan_gives_equal_sizes_per_budget() -> None:
    signals = _signals()
    jobs = plan_jobs(Plan(budgets=(0.05, 0.1, 0.15, 0.3), seeds=3, ablations=ABLATIONS, recipes=RECIPES), signals)
    sizes: dict[float, set[int]] = {}
    for job in jobs:
        sizes.setdefault(job["budget"], set()).add(len(job["positions"]))
    assert all(len(s) == 1 for s in sizes.values())
    assert sizes[1.0] == {len(signals.tasks)}
    count = Counter((job["method"], job["budget"], job["recipe_name"]) for job in jobs)
    assert all(v == 3 for v in count.values())  # three seeds for every method and recipe
    assert {m for m, _, _ in count} == set(METHODS) | {"full"}
    # every subset under both recipes; the full-data run once (it is the same under both)
    assert {r for m, _, r in count if m != "full"} == {"steps", "epochs"}
    assert [r for m, _, r in count if m == "full"] == ["steps"]
    n = len(signals.tasks)
    for job in jobs:
        expected = 300 if job["recipe_name"] == "steps" else round(300 * len(job["positions"]) / n)
        assert job["steps"] == expected


def test_bad_inputs() -> None:
    with pytest.raises(TiveError, match="unknown method"):
        choose_subset("best", _signals(), 0.1, 0)
    with pytest.raises(TiveError, match="shape"):
        Signals(tasks=["a", "b"], grad_norms=np.ones(3), values=np.ones(2), task_values={"a": 1.0, "b": 1.0},
                el2n=np.ones(2), answer_tokens=np.ones(2))


def test_balanced_heuristics_take_the_top_of_each_task() -> None:
    signals = _signals()
    tasks = np.array(signals.tasks)
    for method, scores in (("grad_norm_balanced", signals.grad_norms), ("el2n_balanced", signals.el2n)):
        chosen = np.zeros(len(tasks), dtype=bool)
        chosen[choose_subset(method, signals, 0.15, 0)] = True
        for task in signals.task_sizes:
            mine = tasks == task
            assert scores[mine & chosen].min() >= scores[mine & ~chosen].max(), (method, task)


def test_clusters_spread_the_budget_evenly_over_feature_clusters() -> None:
    """The COINCIDE-style baseline: k-means on the features, then equal shares per cluster (capped by its size)."""
    from tive.bench.methods import kmeans

    signals = _signals()
    k_clusters = round(len(signals.tasks) ** 0.5)
    labels = kmeans(signals.features, k_clusters, seed=3)
    chosen = choose_subset("clusters", signals, 0.15, 3)
    per_cluster = Counter(labels[chosen].tolist())
    sizes = Counter(labels.tolist())
    uncapped = [per_cluster[c] for c in sizes if per_cluster[c] < sizes[c]]
    assert max(uncapped) - min(uncapped) <= 1  # equal shares, except clusters too small for theirs
    # converged spherical k-means: every point is nearest (by cosine) to its own cluster's mean direction
    means = np.stack([signals.features[labels == c].mean(0) for c in range(k_clusters)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_array_equal(np.argmax(signals.features @ means.T, axis=1), labels)


def test_methods_that_need_features_say_so() -> None:
    signals = _signals()
    signals.features = None
    for method in ("tive_diverse", "clusters"):
        with pytest.raises(TiveError, match="needs the reference model's gradient features"):
            choose_subset(method, signals, 0.15, 0)


def _three_tasks() -> Signals:
    # A big task of easy records, a small task of hard ones, a middle one: the paper's rule follows the mean norm.
    tasks = ["big"] * 600 + ["small"] * 100 + ["mid"] * 300
    norms = np.array([1.0] * 600 + [4.0] * 100 + [2.0] * 300)
    return Signals(tasks=tasks, grad_norms=norms, values=np.zeros(1000), task_values={"big": 1, "mid": 2, "small": 4},
                   el2n=np.zeros(1000), answer_tokens=np.ones(1000))


def test_allocation_rules_give_the_documented_task_values() -> None:
    from tive.bench.methods import ALLOCATIONS, allocation_values

    s = _three_tasks()
    assert allocation_values(s, "norm") == {"big": 1.0, "mid": 2.0, "small": 4.0}
    assert allocation_values(s, "sqnorm") == {"big": 1.0, "mid": 4.0, "small": 16.0}
    assert allocation_values(s, "sum") == {"big": 600.0, "mid": 600.0, "small": 400.0}
    assert allocation_values(s, "size") == {"big": 600.0, "mid": 300.0, "small": 100.0}
    mix = allocation_values(s, "mix")
    assert mix["big"] == pytest.approx(0.5 * 1 / 7 + 0.5 * 0.6)
    floor = allocation_values(s, "floor")
    assert floor["big"] == pytest.approx(0.3) and floor["small"] == pytest.approx(4 / 7)
    with pytest.raises(TiveError, match="unknown allocation"):
        allocation_values(s, "nope")
    assert set(ALLOCATIONS) == {"norm", "sqnorm", "sum", "size", "mix", "floor"}
    # The subsets follow: under the paper's rule the small hard task gets the largest share, under size the least.
    import dataclasses

    paper = task_shares(s, choose_subset("tive", s, 0.2, 0))
    by_size = task_shares(s, choose_subset("tive", dataclasses.replace(s, task_values=allocation_values(s, "size")),
                                           0.2, 0))
    # 200 records by 1:2:4 would give the small task 114 > its 100: it is saturated, the rest split 1:2.
    assert paper == {"big": 33, "mid": 67, "small": 100}
    assert by_size == {"big": 120, "mid": 60, "small": 20}


def test_excluded_tasks_get_nothing_and_the_budget_goes_elsewhere() -> None:
    import dataclasses

    s = dataclasses.replace(_three_tasks(), exclude_tasks=("small",))
    chosen = choose_subset("tive", s, 0.2, 0)
    shares = task_shares(s, chosen)
    assert shares == {"big": 67, "mid": 133, "small": 0}


def test_default_plan_is_sixteen_runs_in_a_clean_world_and_twenty_four_with_defects() -> None:
    # Issue 19, item 7: at 15%, equal steps, 4 seeds: full, random, random_stratified, tive; the oracles only where
    # the world has known defects (40 runs over clean and mixed).
    clean = _signals()
    clean.defective, clean.oracle_skip_tasks = np.zeros(len(clean.tasks), dtype=bool), ()
    mixed = _signals()
    for signals, methods in ((clean, {"full", "random", "random_stratified", "tive"}),
                             (mixed, {"full", "random", "random_stratified", "tive", "clean_oracle", "task_oracle"})):
        jobs = plan_jobs(Plan(), signals)
        count = Counter(job["method"] for job in jobs)
        assert set(count) == methods and set(count.values()) == {4}
        assert {job["recipe_name"] for job in jobs} == {"steps"}
        assert {job["budget"] for job in jobs if job["method"] != "full"} == {0.15}
    own = _signals()
    own.defective = None
    assert {job["method"] for job in plan_jobs(Plan(seeds=1), own)} == {"full", "random", "random_stratified", "tive"}


def test_clean_oracle_takes_only_clean_records_in_the_input_shares() -> None:
    signals = _signals()
    k = budget_count(0.15, len(signals.tasks))
    proportional = {t: k * n / len(signals.tasks) for t, n in signals.task_sizes.items()}
    for seed in (0, 1):
        chosen = choose_subset("clean_oracle", signals, 0.15, seed)
        assert not signals.defective[chosen].any()
        shares = task_shares(signals, chosen)
        assert all(abs(shares[t] - proportional[t]) <= 1 for t in shares)
    assert not np.array_equal(choose_subset("clean_oracle", signals, 0.15, 0),
                              choose_subset("clean_oracle", signals, 0.15, 1))
    # A task short of clean records gives its leftover to the others; still exactly k records.
    signals.defective = np.array([t == "hard" or d for t, d in zip(signals.tasks, signals.defective)])
    chosen = choose_subset("clean_oracle", signals, 0.15, 0)
    assert len(chosen) == k and task_shares(signals, chosen)["hard"] == 0


def test_task_oracle_skips_the_known_and_trap_tasks() -> None:
    signals = _signals()
    k = budget_count(0.15, len(signals.tasks))
    shares = task_shares(signals, choose_subset("task_oracle", signals, 0.15, 0))
    assert shares["hard"] == 0 and sum(shares.values()) == k
    rest = sum(n for t, n in signals.task_sizes.items() if t != "hard")
    assert all(abs(shares[t] - k * signals.task_sizes[t] / rest) <= 1 for t in shares if t != "hard")


def test_oracles_refuse_data_without_a_ground_truth() -> None:
    signals = _signals()
    signals.defective = None
    for method in ("clean_oracle", "task_oracle"):
        with pytest.raises(TiveError, match="ground truth"):
            choose_subset(method, signals, 0.15, 0)


@pytest.mark.parametrize(("method", "named"), [("tive_lastk", "layers last:1"), ("tive_proxy", "proxy base model")])
def test_tive_variants_are_tive_on_their_own_signals(method: str, named: str) -> None:
    signals = _signals()
    variant = signals.variants[method]
    for seed in (0, 3):
        assert np.array_equal(choose_subset(method, signals, 0.15, seed), choose_subset("tive", variant, 0.15, seed))
    assert not np.array_equal(choose_subset(method, signals, 0.15, 0), choose_subset("tive", signals, 0.15, 0))
    signals.variants = {}
    with pytest.raises(TiveError, match=named):
        choose_subset(method, signals, 0.15, 0)
