"""benchmarks/bench_power.py: the instrument's targets, evaluated on synthetic results (nothing is trained)."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from tive.errors import TiveError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_power.py"
BENCHES = ["a", "b", "c"]
CHANCE = {"a": 20.0, "b": 30.0, "c": 25.0}  # mean 25
# Per-seed offsets: std (ddof=1) of JITTER is 0.42 (mean 0.05), of ORACLE_JITTER 0.26 (mean 0.15).
JITTER = [0.0, 0.5, -0.5, 0.2]
ORACLE_JITTER = [0.3, -0.2, 0.1, 0.4]


@pytest.fixture(scope="module")
def power() -> dict:
    return runpy.run_path(str(SCRIPT))


def _run(world: str, method: str, seed: int, average: float, recipe: str = "steps",
         scores: dict[str, float] | None = None, budget: float | None = None) -> dict:
    scores = scores if scores is not None else {b: average for b in BENCHES}
    return {"world": world, "method": method, "budget": budget if budget is not None else
            (1.0 if method == "full" else 0.15), "recipe": recipe, "seed": seed,
            "average": float(np.mean(list(scores.values()))), "scores": scores, "logliks": {}}


LEVELS = {("clean", "full"): 60.0, ("clean", "random"): 50.0, ("clean", "tive"): 51.0,
          ("mixed", "full"): 50.0, ("mixed", "random"): 42.0, ("mixed", "clean_oracle"): 48.0}


def _results(levels: dict | None = None, seeds: int = 4, wall: float | None = 1800.0, items: int = 625,
             drop: tuple = ()) -> dict:
    """A results.json that meets every target; `levels` overrides a (world, method)'s level, `drop` removes
    (world, method)'s runs."""
    levels = {**LEVELS, **(levels or {})}
    runs = []
    for (world, method), level in levels.items():
        if (world, method) in drop:
            continue
        jitter = ORACLE_JITTER if method == "clean_oracle" else JITTER
        runs += [_run(world, method, s, level + jitter[s]) for s in range(seeds)]
    return {"world_seed": 0, "worlds": ["clean", "mixed"], "benchmarks": BENCHES, "chance": dict(CHANCE),
            "items": {b: items for b in BENCHES}, "runs": runs, "defects": {},
            "timing": {"wall_seconds": wall} if wall is not None else {}, "per_world": {}}


def _checks(power: dict, results: dict) -> dict[str, dict]:
    return {c["id"]: c for c in power["evaluate"](results)["checks"]}


def test_every_target_is_met_on_results_that_meet_them(power) -> None:
    checks = _checks(power, _results())
    assert list(checks) == power["TARGET_IDS"]
    assert {i: c["met"] for i, c in checks.items() if not c["met"]} == {}
    assert all(c["measured"] != "not run" for c in checks.values())


def test_smallest_detectable_difference_against_a_hand_computation(power) -> None:
    # d = 1, 2, 4, 5: mean 3, squares 4+1+1+4 = 10, sd = sqrt(10/3) = 1.825742; n = 4, df = 3:
    # t.975 = 3.182446, t.80 = 0.978472 (tables) -> (3.182446 + 0.978472) * 1.825742 / 2 = 3.798377
    assert power["smallest_detectable_difference"]([1.0, 2.0, 4.0, 5.0]) == pytest.approx(3.798377, abs=1e-5)
    # The sign of the differences does not matter, their spread does.
    assert power["smallest_detectable_difference"]([-1.0, -2.0, -4.0, -5.0]) == pytest.approx(3.798377, abs=1e-5)
    assert math.isnan(power["smallest_detectable_difference"]([3.0]))


def test_smallest_detectable_difference_pairs_random_and_clean_oracle_by_seed(power) -> None:
    results = _results(drop={("mixed", "random"), ("mixed", "clean_oracle")})
    # random - clean_oracle per seed: 1, 2, 4, 5 (seed order shuffled in the list, an extra oracle seed unpaired)
    for seed, (random_average, oracle_average) in enumerate([(41, 40), (42, 40), (44, 40), (45, 40)]):
        results["runs"].append(_run("mixed", "clean_oracle", seed, oracle_average))
        results["runs"].insert(0, _run("mixed", "random", seed, random_average))
    results["runs"].append(_run("mixed", "clean_oracle", 7, 90.0))
    check = _checks(power, results)["smallest_detectable_difference"]
    assert check["value"] == pytest.approx(3.798377, abs=1e-5)
    assert not check["met"] and "4 seeds" in check["measured"]
    # The same spread at a tenth: 0.38 <= 2.
    results = _results(drop={("mixed", "random"), ("mixed", "clean_oracle")})
    for seed, d in enumerate([0.1, 0.2, 0.4, 0.5]):
        results["runs"] += [_run("mixed", "random", seed, 40 + d), _run("mixed", "clean_oracle", seed, 40.0)]
    check = _checks(power, results)["smallest_detectable_difference"]
    assert check["value"] == pytest.approx(0.3798377, abs=1e-5) and check["met"]


def test_clean_full_data_average_needs_55_and_chance_plus_20(power) -> None:
    assert not _checks(power, _results({("clean", "full"): 54.0}))["clean_full"]["met"]
    # 55 on the nose, every seed: met (>=).
    results = _results()
    results["runs"] = [r for r in results["runs"] if not (r["world"] == "clean" and r["method"] == "full")]
    results["runs"] += [_run("clean", "full", s, 55.0) for s in range(4)]
    assert _checks(power, results)["clean_full"]["met"]
    # Above 55 but within 20 of a mean chance of 40.
    results = _results({("clean", "full"): 58.0, ("clean", "random"): 50.0})
    results["chance"] = {"a": 40.0, "b": 40.0, "c": 40.0}
    check = _checks(power, results)["clean_full"]
    assert not check["met"] and "40.0" in check["measured"]


def test_every_clean_benchmark_must_clear_its_chance_by_10_and_the_failures_are_named(power) -> None:
    results = _results(drop={("clean", "full")})
    results["runs"] += [_run("clean", "full", s, 0, scores={"a": 60.0 + JITTER[s], "b": 38.0, "c": 85.0})
                        for s in range(4)]
    check = _checks(power, results)["clean_benchmarks"]
    assert not check["met"]
    assert "b" in check["measured"] and "a " not in check["measured"]
    results["runs"] = [r for r in results["runs"] if not (r["world"] == "clean" and r["method"] == "full")]
    results["runs"] += [_run("clean", "full", s, 0, scores={"a": 60.0, "b": 40.0, "c": 85.0}) for s in range(4)]
    assert _checks(power, results)["clean_benchmarks"]["met"]


def test_mixed_full_data_average_needs_45_and_chance_plus_15(power) -> None:
    assert not _checks(power, _results({("mixed", "full"): 44.0}))["mixed_full"]["met"]
    results = _results()
    results["chance"] = {"a": 32.0, "b": 32.0, "c": 32.0}  # 50.05 >= 32 + 15: met
    assert _checks(power, results)["mixed_full"]["met"]
    results["chance"] = {"a": 36.0, "b": 36.0, "c": 36.0}  # 50.05 < 36 + 15
    assert not _checks(power, results)["mixed_full"]["met"]


@pytest.mark.parametrize("world,method,check_id", [
    ("clean", "full", "std_clean_full"), ("clean", "random", "std_clean_random"),
    ("mixed", "full", "std_mixed_full"), ("mixed", "random", "std_mixed_random")])
def test_std_over_seeds_at_most_1(power, world, method, check_id) -> None:
    results = _results(drop={(world, method)})
    level = LEVELS[(world, method)]
    results["runs"] += [_run(world, method, s, level + 2 * JITTER[s]) for s in range(4)]  # std 0.84
    assert _checks(power, results)[check_id]["met"]
    results = _results(drop={(world, method)})
    results["runs"] += [_run(world, method, s, level + 3 * JITTER[s]) for s in range(4)]  # std 1.26
    checks = _checks(power, results)
    assert not checks[check_id]["met"] and "1.26" in checks[check_id]["measured"]
    # (three times the spread of mixed random also widens its paired differences with clean_oracle)
    assert all(c["met"] for i, c in checks.items() if i not in (check_id, "smallest_detectable_difference"))


def test_std_needs_two_seeds(power) -> None:
    checks = _checks(power, _results(seeds=1))
    for check_id in ("std_clean_full", "std_clean_random", "std_mixed_full", "std_mixed_random",
                     "smallest_detectable_difference"):
        assert not checks[check_id]["met"]


def test_random_15_under_equal_epochs_is_not_the_equal_steps_run(power) -> None:
    results = _results()
    results["runs"] += [_run("clean", "random", s, 10.0 + 9 * s, recipe="epochs") for s in range(4)]
    results["runs"] += [_run("clean", "random", s, 90.0, budget=0.05) for s in range(4)]
    assert all(c["met"] for c in _checks(power, results).values())


def test_at_least_625_items_per_benchmark(power) -> None:
    results = _results()
    results["items"]["c"] = 600
    check = _checks(power, results)["items"]
    assert not check["met"] and "c 600" in check["measured"] and "a 625" not in check["measured"]
    del results["items"]
    assert _checks(power, results)["items"]["measured"] == "not run"


def test_random_must_fall_5_below_full_in_clean(power) -> None:
    assert not _checks(power, _results({("clean", "random"): 56.0}))["data_matters"]["met"]
    assert _checks(power, _results({("clean", "random"): 54.9}))["data_matters"]["met"]


def test_clean_oracle_must_beat_random_by_5_in_mixed(power) -> None:
    check = _checks(power, _results({("mixed", "clean_oracle"): 46.0}))["selection_wins"]
    assert not check["met"]
    assert _checks(power, _results({("mixed", "clean_oracle"): 47.5}))["selection_wins"]["met"]


def test_wall_time_at_most_45_minutes(power) -> None:
    assert _checks(power, _results(wall=2700.0))["wall_time"]["met"]
    check = _checks(power, _results(wall=2701.0))["wall_time"]
    assert not check["met"] and "45.0 min" in check["measured"] and "resumed" in check["measured"]
    check = _checks(power, _results(wall=None))["wall_time"]
    assert check["measured"] == "not run" and not check["met"]


def test_targets_whose_runs_are_missing_read_not_run(power) -> None:
    checks = _checks(power, _results(drop={("mixed", "full"), ("mixed", "random"), ("mixed", "clean_oracle")}))
    for check_id in ("mixed_full", "std_mixed_full", "std_mixed_random", "smallest_detectable_difference",
                     "selection_wins"):
        assert checks[check_id]["measured"] == "not run" and not checks[check_id]["met"], check_id
    assert checks["clean_full"]["met"] and checks["data_matters"]["met"]
    checks = _checks(power, _results(drop={("mixed", "clean_oracle")}))
    assert checks["selection_wins"]["measured"] == "not run" and checks["mixed_full"]["met"]


def test_summary_counts_seeds_met_and_keeps_held_out_apart(power) -> None:
    good, bad = power["evaluate"](_results()), power["evaluate"](_results({("clean", "full"): 50.0}))
    bad["world_seed"] = 1
    held = power["evaluate"](_results(drop={("mixed", "clean_oracle")}))
    held["world_seed"] = 4
    rows = {r["id"]: r for r in power["summarize"]([good, bad], [held])}
    assert rows["clean_full"]["met"] == 1 and rows["clean_full"]["of"] == 2
    assert rows["mixed_full"]["met"] == 2
    assert rows["selection_wins"]["held_out_met"] == 0 and rows["selection_wins"]["held_out_of"] == 1
    text = power["summary_markdown"]([good, bad], [held])
    assert "1 of 2" in text and "not run" in text and "held out" in text


def test_the_script_writes_power_json_and_md_per_folder(power, tmp_path, capsys) -> None:
    for seed in (0, 1, 4):
        folder = tmp_path / f"b{seed}"
        folder.mkdir()
        results = _results({("clean", "random"): 58.0} if seed else None)
        results["world_seed"] = seed
        (folder / "results.json").write_text(json.dumps(results))
    power["run"]([str(tmp_path / "b0"), str(tmp_path / "b1"), "--held-out", str(tmp_path / "b4")])
    assert (tmp_path / "b4" / "power.md").is_file()
    saved = json.loads((tmp_path / "b1" / "power.json").read_text())
    assert {c["id"]: c["met"] for c in saved["checks"]}["data_matters"] is False
    md = (tmp_path / "b0" / "power.md").read_text()
    assert md.startswith("| target | measured | met |")
    out = capsys.readouterr().out
    assert "1 of 2" in out and "2 of 2" in out and "seed 4 (held out)" in out and "0 of 1" in out


def test_a_folder_without_results_is_a_clear_error(power, tmp_path) -> None:
    with pytest.raises(TiveError, match="results.json"):
        power["run"]([str(tmp_path)])


def test_controls_read_the_clean_world_or_a_single_world_results(power, tmp_path) -> None:
    single = {"benchmarks": BENCHES, "runs": []}
    assert power["controls_source"](tmp_path, single) == tmp_path / "results.json"
    combined = _results()
    combined["per_world"] = {"clean": str(tmp_path / "clean" / "results.json")}
    with pytest.raises(TiveError, match="clean"):
        power["controls_source"](tmp_path, combined)
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "results.json").write_text("{}")
    assert power["controls_source"](tmp_path, combined) == tmp_path / "clean" / "results.json"
    combined["per_world"] = {"mixed": "x"}
    with pytest.raises(TiveError, match="clean"):
        power["controls_source"](tmp_path, combined)


def test_control_jobs_leave_out_the_task_a_benchmark_depends_on(power) -> None:
    tasks = np.array(["vqav2", "gqa", "vqav2", "ocrvqa", "llava"])
    jobs = power["control_jobs"](["vqav2", "textvqa", "pope", "refcoco"], tasks, steps=80)
    assert [(j["benchmark"], j["method"]) for j in jobs] == [("vqav2", "full_minus_vqav2"),
                                                               ("textvqa", "full_minus_ocrvqa")]
    assert list(jobs[0]["positions"]) == [1, 3, 4] and jobs[0]["budget"] == 0.6
    assert jobs[1]["steps"] == 80 and jobs[1]["recipe_name"] == "steps" and jobs[1]["seed"] == 0


def test_method_table_lists_every_method_of_every_world(power) -> None:
    rows = power["evaluate"](_results())["methods"]
    assert {(r["world"], r["method"]) for r in rows} == set(LEVELS)
    clean_full = next(r for r in rows if (r["world"], r["method"]) == ("clean", "full"))
    assert clean_full["seeds"] == 4 and clean_full["average"] == pytest.approx(60.05)


def test_a_single_world_results_json_reads_as_clean(power, tmp_path) -> None:
    # Written before the bench ran several worlds: no `worlds`, runs without `world`, items in the eval files.
    evals = []
    for name in BENCHES:
        evals.append(tmp_path / f"{name}.json")
        evals[-1].write_text(json.dumps([{"id": i} for i in range(630)]))
    single = {"benchmarks": BENCHES, "chance": dict(CHANCE), "timing": {"wall_seconds": 600.0},
              "inputs": {"evals": [str(p) for p in evals], "world": {"seed": 3}},
              "runs": [{k: v for k, v in r.items() if k != "world"} for r in _results()["runs"]
                       if r["world"] == "clean"]}
    (tmp_path / "results.json").write_text(json.dumps(single))
    evaluation = power["run"]([str(tmp_path)])[0]
    checks = {c["id"]: c for c in evaluation["checks"]}
    assert evaluation["world_seed"] == 3
    assert checks["clean_full"]["met"] and checks["data_matters"]["met"] and checks["items"]["met"]
    assert checks["mixed_full"]["measured"] == "not run"
    assert "read as `clean`" in (tmp_path / "power.md").read_text()
    # In a combined results.json a run without a world belongs to none.
    combined = _results()
    for r in combined["runs"]:
        del r["world"]
    assert power["evaluate"](combined)["checks"][0]["measured"] == "not run"


def test_power_json_is_strict_json_with_one_seed(power, tmp_path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results(seeds=1)))
    power["run"]([str(tmp_path)])

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in power.json")

    saved = json.loads((tmp_path / "power.json").read_text(), parse_constant=refuse)
    assert all(r["std"] is None for r in saved["methods"])
