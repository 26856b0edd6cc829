"""Can a finished `tive bench` judge a selection? Its figures against the instrument's targets (issue 19).

    python benchmarks/bench_power.py DIR [DIR ...] [--held-out DIR ...] [--controls [--workers N]]

Each DIR is one finished `tive bench --out DIR --world-seed S` (the development world seeds, e.g. 0-3);
`--held-out` folders (e.g. seed 4) are evaluated the same way and counted apart. Per folder, from DIR/results.json
(every figure is the mean over the bench's seeds; subset methods at 15% under equal steps):

- `clean`: full-data average >= 55 and >= the mean chance level + 20; every benchmark >= its chance + 10;
- `mixed`: full-data average >= 45 and >= the mean chance level + 15 (its defects are meant to hurt);
- repeatability: std over seeds (ddof=1) of the average <= 1.0, for full data and for random, in each world;
- >= 625 items per benchmark; the smallest detectable difference <= 2 points: (t_.975,df + t_.80,df) sd(d) / sqrt(n)
  over the per-seed paired differences d of random minus `clean_oracle` in `mixed` (n seeds, df = n - 1; a 5%
  two-sided test with 80% power);
- the data matters: random <= full - 5 in `clean`;
- selection can win: `clean_oracle` >= random + 5 in `mixed`;
- the bench's wall time (timing.wall_seconds) <= 45 min; it reads long when the run was resumed or the machine
  shared.

A target whose runs are missing reads "not run" and is not met. Writes DIR/power.json and DIR/power.md per folder
(also printed), then prints how many seeds meet each target.

`--controls` also trains, in the `clean` world (DIR/clean/results.json, or DIR/results.json of a single-world
bench), the full data minus the training task a benchmark depends on (seed 0, equal steps), and reports that
benchmark's drop against full data: a check of each benchmark's sensitivity, no longer a target. The control
runs are cached next to those results, in runs_controls/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError

BUDGET = 0.15
RECIPE = "steps"
MIN_ITEMS = 625
MAX_STD = 1.0
MAX_SDD = 2.0
MAX_WALL_MINUTES = 45.0
NOT_RUN = "not run"

TARGETS: list[tuple[str, str]] = [
    ("clean_full", "`clean`: full-data average ≥ 55 and ≥ mean chance + 20"),
    ("clean_benchmarks", "`clean`: every benchmark ≥ its chance + 10 (full data)"),
    ("mixed_full", "`mixed`: full-data average ≥ 45 and ≥ mean chance + 15"),
    ("std_clean_full", "`clean`: std over seeds ≤ 1.0, full data"),
    ("std_clean_random", "`clean`: std over seeds ≤ 1.0, random 15% (equal steps)"),
    ("std_mixed_full", "`mixed`: std over seeds ≤ 1.0, full data"),
    ("std_mixed_random", "`mixed`: std over seeds ≤ 1.0, random 15% (equal steps)"),
    ("items", "≥ 625 items per benchmark"),
    ("smallest_detectable_difference",
     "smallest detectable difference ≤ 2 points (`mixed`, random vs `clean_oracle` 15%, paired by seed)"),
    ("data_matters", "`clean`: random 15% (equal steps) ≤ full − 5"),
    ("selection_wins", "`mixed`: `clean_oracle` 15% ≥ random 15% + 5"),
    ("wall_time", "the bench's wall time ≤ 45 min"),
]
TARGET_IDS = [target_id for target_id, _ in TARGETS]

# Benchmark -> the training task that teaches its skill in the built-in world (src/tive/bench/world.py).
CONTROLS = {
    "vqav2": "vqav2",
    "gqa": "gqa",
    "textvqa": "ocrvqa",
    "mmbench": "aokvqa",
    "refcoco": "refcoco",
}


def std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def smallest_detectable_difference(differences: list[float], alpha: float = 0.05, power: float = 0.80) -> float:
    """The smallest true mean difference a paired t-test over these per-seed differences detects (two-sided
    `alpha`, the given power): (t_{1-alpha/2,df} + t_{power,df}) * sd(d) / sqrt(n), df = n - 1; nan below 2."""
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return float("nan")
    df = n - 1
    return float((t.ppf(1 - alpha / 2, df) + t.ppf(power, df)) * np.std(differences, ddof=1) / math.sqrt(n))


def run_world(results: dict[str, Any], run: dict[str, Any]) -> str | None:
    """The world a run trained in: its own `world`; in a single-world results.json written before the bench ran
    several worlds (no `worlds` list, runs without `world`), the built-in world had no defects: `clean`."""
    if "world" in run:
        return run["world"]
    return None if "worlds" in results else "clean"


def world_seed(results: dict[str, Any]) -> int | None:
    if results.get("world_seed") is not None:
        return results["world_seed"]
    world = (results.get("inputs") or {}).get("world") or {}
    return world.get("seed")


def runs_of(results: dict[str, Any], world: str, method: str) -> dict[int, dict[str, Any]]:
    """The runs of `method` in `world`, by seed: full data at any recipe, any other method at 15% (equal steps)."""
    chosen = {}
    for run in results.get("runs", []):
        if run_world(results, run) != world or run.get("method") != method:
            continue
        if method != "full" and (run.get("recipe") != RECIPE or not math.isclose(run.get("budget", -1), BUDGET)):
            continue
        chosen[int(run["seed"])] = run
    return dict(sorted(chosen.items()))


def _mean(runs: dict[int, dict[str, Any]]) -> float:
    return float(np.mean([r["average"] for r in runs.values()]))


def _check(target_id: str, measured: str, met: bool, value: float | None = None) -> dict[str, Any]:
    target = dict(TARGETS)[target_id]
    return {"id": target_id, "target": target, "measured": measured, "met": bool(met),
            "value": None if value is None or math.isnan(value) else float(value)}


def _not_run(target_id: str) -> dict[str, Any]:
    return _check(target_id, NOT_RUN, False)


def _full_average(results: dict[str, Any], world: str, target_id: str, floor: float, margin: float,
                  mean_chance: float) -> dict[str, Any]:
    full = runs_of(results, world, "full")
    if not full:
        return _not_run(target_id)
    average = _mean(full)
    return _check(target_id, f"{average:.1f} (mean chance {mean_chance:.1f}, {average - mean_chance:+.1f}; "
                  f"{len(full)} seeds)", average >= floor and average >= mean_chance + margin, average)


def _std(results: dict[str, Any], world: str, method: str, target_id: str) -> dict[str, Any]:
    runs = runs_of(results, world, method)
    if not runs:
        return _not_run(target_id)
    if len(runs) < 2:
        return _check(target_id, f"{len(runs)} seed: no std (needs 2 or more)", False)
    value = std([r["average"] for r in runs.values()])
    return _check(target_id, f"{value:.2f} ({len(runs)} seeds)", value <= MAX_STD, value)


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    """Every target of the instrument on one world seed's combined results.json; pure (reads nothing)."""
    names = list(results.get("benchmarks", []))
    chance = results.get("chance", {})
    mean_chance = float(np.mean([chance[n] for n in names])) if names else float("nan")
    checks = [
        _full_average(results, "clean", "clean_full", 55.0, 20.0, mean_chance),
    ]

    full = runs_of(results, "clean", "full")
    if full:
        margins = {n: float(np.mean([r["scores"][n] for r in full.values()])) - chance[n] for n in names}
        below = [n for n in names if margins[n] < 10]
        lowest = min(names, key=margins.get)
        measured = (", ".join(f"{n} {margins[n]:+.1f} over chance {chance[n]:.1f}" for n in below) if below
                    else f"all {len(names)} (least: {lowest} {margins[lowest]:+.1f})")
        checks.append(_check("clean_benchmarks", measured, not below))
    else:
        checks.append(_not_run("clean_benchmarks"))

    checks.append(_full_average(results, "mixed", "mixed_full", 45.0, 15.0, mean_chance))
    for world in ("clean", "mixed"):
        for method, label in (("full", "full"), ("random", "random")):
            checks.append(_std(results, world, method, f"std_{world}_{label}"))

    items = results.get("items")
    if items and all(n in items for n in names):
        short = [n for n in names if items[n] < MIN_ITEMS]
        measured = (", ".join(f"{n} {items[n]}" for n in short) + f" (< {MIN_ITEMS})" if short
                    else f"{min(items[n] for n in names)}–{max(items[n] for n in names)}")
        checks.append(_check("items", measured, not short, min(items[n] for n in names)))
    else:
        checks.append(_not_run("items"))

    random_mixed, oracle_mixed = runs_of(results, "mixed", "random"), runs_of(results, "mixed", "clean_oracle")
    paired = sorted(set(random_mixed) & set(oracle_mixed))
    if not paired:
        checks.append(_not_run("smallest_detectable_difference"))
    else:
        d = [random_mixed[s]["average"] - oracle_mixed[s]["average"] for s in paired]
        if len(d) < 2:
            checks.append(_check("smallest_detectable_difference", "1 paired seed (needs 2 or more)", False))
        else:
            sdd = smallest_detectable_difference(d)
            checks.append(_check("smallest_detectable_difference",
                                 f"{sdd:.2f} ({len(d)} seeds; mean d {np.mean(d):+.1f}, sd(d) {std(d):.2f})",
                                 sdd <= MAX_SDD, sdd))

    random_clean = runs_of(results, "clean", "random")
    if full and random_clean:
        gap = _mean(random_clean) - _mean(full)
        checks.append(_check("data_matters", f"random {_mean(random_clean):.1f}, full {_mean(full):.1f} ({gap:+.1f})",
                             gap <= -5, gap))
    else:
        checks.append(_not_run("data_matters"))

    if random_mixed and oracle_mixed:
        gain = _mean(oracle_mixed) - _mean(random_mixed)
        checks.append(_check("selection_wins", f"clean_oracle {_mean(oracle_mixed):.1f}, random "
                             f"{_mean(random_mixed):.1f} ({gain:+.1f})", gain >= 5, gain))
    else:
        checks.append(_not_run("selection_wins"))

    wall = results.get("timing", {}).get("wall_seconds")
    if wall is None:
        checks.append(_not_run("wall_time"))
    else:
        minutes = wall / 60
        checks.append(_check("wall_time", f"{minutes:.1f} min (reads long when the run was resumed or the machine "
                             "shared)", minutes <= MAX_WALL_MINUTES, minutes))

    return {"world_seed": world_seed(results), "single_world": "worlds" not in results, "checks": checks,
            "benchmarks": _benchmark_rows(results), "methods": _method_rows(results)}


def _benchmark_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in results.get("benchmarks", []):
        row: dict[str, Any] = {"benchmark": name, "items": results.get("items", {}).get(name),
                               "chance": results.get("chance", {}).get(name)}
        for world in ("clean", "mixed"):
            full = runs_of(results, world, "full")
            row[world] = float(np.mean([r["scores"][name] for r in full.values()])) if full else None
        rows.append(row)
    return rows


def _method_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean and std over seeds of every method at 15% (equal steps) and full data, per world."""
    rows = []
    runs = results.get("runs", [])
    worlds = results.get("worlds") or list(dict.fromkeys(w for r in runs if (w := run_world(results, r))))
    for world in worlds:
        methods = list(dict.fromkeys(r["method"] for r in runs if run_world(results, r) == world))
        for method in methods:
            chosen = runs_of(results, world, method)
            if chosen:
                averages = [r["average"] for r in chosen.values()]
                rows.append({"world": world, "method": method, "seeds": len(chosen),
                             "average": float(np.mean(averages)), "std": std(averages) if len(averages) > 1 else None})
    return rows


def _label(evaluation: dict[str, Any]) -> str:
    seed = evaluation.get("world_seed")
    return f"seed {seed}" if seed is not None else str(evaluation.get("folder", "?"))


def markdown(evaluation: dict[str, Any]) -> str:
    """One folder's tables: the targets, the benchmarks, the methods (and the controls when run)."""
    lines = ["| target | measured | met |", "|---|---|---|"]
    if evaluation.get("single_world"):
        lines = ["A single-world results.json (before the bench ran several worlds): its runs read as `clean`.",
                 "", *lines]
    lines += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else 'no'} |" for c in evaluation["checks"]]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    lines += ["", "| benchmark | items | chance | clean full | above chance | mixed full |",
              "|---|---|---|---|---|---|"]
    for row in evaluation["benchmarks"]:
        above = None if row["clean"] is None or row["chance"] is None else row["clean"] - row["chance"]
        lines.append(f"| {row['benchmark']} | {row['items'] if row['items'] is not None else '–'} | "
                     f"{fmt(row['chance'])} | {fmt(row['clean'])} | "
                     f"{'–' if above is None else f'{above:+.1f}'} | {fmt(row['mixed'])} |")
    if evaluation["methods"]:
        lines += ["", "| world | method (15%, equal steps; full: all data) | seeds | average ± std |",
                  "|---|---|---|---|"]
        lines += [f"| {r['world']} | {r['method']} | {r['seeds']} | {r['average']:.1f}"
                  + ("" if r["std"] is None else f" ± {r['std']:.2f}") + " |" for r in evaluation["methods"]]
    if evaluation.get("controls"):
        lines += ["", "| control (`clean`): full data without | benchmark | full data | control | drop |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d['removed_task']} | {d['benchmark']} | {d['full']:.1f} | {d['control']:.1f} | "
                  f"{d['drop']:+.1f} |" for d in evaluation["controls"]]
    return "\n".join(lines)


def summarize(development: list[dict[str, Any]], held_out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per target: on how many development seeds (and held-out seeds) it is met."""
    held_out = held_out or []
    rows = []
    for target_id, target in TARGETS:
        def met(evaluations: list[dict[str, Any]]) -> int:
            return sum(next(c for c in e["checks"] if c["id"] == target_id)["met"] for e in evaluations)

        rows.append({"id": target_id, "target": target, "met": met(development), "of": len(development),
                     "held_out_met": met(held_out), "held_out_of": len(held_out)})
    return rows


def summary_markdown(development: list[dict[str, Any]], held_out: list[dict[str, Any]] | None = None) -> str:
    held_out = held_out or []
    folders = [(e, "") for e in development] + [(e, " (held out)") for e in held_out]
    header = ["target", *[_label(e) + suffix for e, suffix in folders], "met on"]
    if held_out:
        header.append("held out: met on")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summarize(development, held_out):
        cells = []
        for evaluation, _ in folders:
            check = next(c for c in evaluation["checks"] if c["id"] == row["id"])
            cells.append("yes" if check["met"] else NOT_RUN if check["measured"] == NOT_RUN else "no")
        line = [row["target"], *cells, f"{row['met']} of {row['of']}"]
        if held_out:
            line.append(f"{row['held_out_met']} of {row['held_out_of']}")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def load_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise TiveError(f"{path}: not found; give the folder of a finished `tive bench --out {folder}`")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TiveError(f"{path}: not valid JSON ({error}); rerun `tive bench --out {folder}` to finish it") from None
    if "items" not in results and "inputs" in results:
        # A single-world results.json names its benchmark files instead of counting their items.
        evals = [Path(p) for p in results["inputs"].get("evals", [])]
        if evals and all(p.is_file() for p in evals):
            results["items"] = {name: len(json.loads(p.read_text()))
                                for name, p in zip(results["benchmarks"], evals)}
    return results


def controls_source(folder: Path, results: dict[str, Any]) -> Path:
    """The results.json of the `clean` world the controls train in: the combined bench's per-world file, or the
    folder's own results.json when it is a single-world bench."""
    if "per_world" not in results:
        return folder / "results.json"
    named = results["per_world"].get("clean")
    if not named:
        raise TiveError(f"{folder / 'results.json'}: the bench ran no clean world "
                        f"({', '.join(results['per_world']) or 'no worlds'}); the controls train in `clean`: rerun "
                        f"`tive bench --out {folder}` with it")
    # The path as the bench wrote it, or the same place under DIR when the folder was moved.
    candidates = [Path(named), folder / "clean" / "results.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise TiveError(f"{folder / 'results.json'}: the clean world's results are missing (looked for "
                    f"{', '.join(str(p) for p in candidates)}); rerun `tive bench --out {folder}` to finish it")


def control_jobs(names: list[str], tasks: np.ndarray, steps: int) -> list[dict[str, Any]]:
    """One run per benchmark with a known task: full data without that task, seed 0, equal steps."""
    jobs = []
    for bench, task in CONTROLS.items():
        if bench not in names or task not in set(tasks.tolist()):
            continue
        positions = np.flatnonzero(tasks != task)
        jobs.append({"method": f"full_minus_{task}", "budget": round(len(positions) / len(tasks), 4), "seed": 0,
                     "positions": positions, "recipe_name": RECIPE, "steps": steps, "benchmark": bench})
    return jobs


def run_controls(folder: Path, results: dict[str, Any], workers: int | None) -> list[dict[str, Any]]:
    """Train the controls in the `clean` world (cached) and return each benchmark's drop against full data."""
    from tive.bench.model import Recipe
    from tive.bench.runner import Plan, run_jobs

    source = controls_source(folder, results)
    world = json.loads(source.read_text())
    world_dir = source.parent
    names = world["benchmarks"]
    full = [r for r in world["runs"] if r["method"] == "full"]
    if not full:
        raise TiveError(f"{source}: no full-data runs to compare the controls with")
    full_scores = {name: float(np.mean([r["scores"][name] for r in full])) for name in names}
    signals = Path(world["caches"]["selection"][0]) / "bench_signals.npz"
    if not signals.is_file():
        raise TiveError(f"{signals}: not found; the controls need the bench's selection cache: rerun "
                        f"`tive bench --out {folder}`")
    tasks = np.array([str(t) for t in np.load(signals)["tasks"]])
    recipe = Recipe(**world["plan"]["recipe"])
    jobs = control_jobs(names, tasks, recipe.steps)
    base_dir = next((d for d in (world_dir / "base", folder / "base") if d.is_dir()), world_dir / "base")
    controls = run_jobs([{k: v for k, v in j.items() if k != "benchmark"} for j in jobs],
                        Plan(recipe=recipe, workers=workers), world["caches"]["keys"]["encoded"],
                        Path(world["caches"]["encoded"]), base_dir, world_dir / "runs_controls")
    return [{"benchmark": job["benchmark"], "removed_task": job["method"][len("full_minus_"):],
             "full": full_scores[job["benchmark"]], "control": run["scores"][job["benchmark"]],
             "drop": full_scores[job["benchmark"]] - run["scores"][job["benchmark"]]}
            for job, run in zip(jobs, controls)]


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="finished tive bench folders, one per world seed")
    parser.add_argument("--held-out", type=Path, nargs="+", default=[], metavar="DIR",
                        help="folders of held-out world seeds, counted apart")
    parser.add_argument("--controls", action="store_true",
                        help="also train the full-minus-task controls in the clean world (not a target)")
    parser.add_argument("--workers", type=int, default=None, help="training processes for --controls")
    args = parser.parse_args(argv)

    loaded = [(folder, load_results(folder)) for folder in [*args.folders, *args.held_out]]
    evaluations = []
    for folder, results in loaded:
        evaluation = evaluate(results)
        evaluation["folder"] = str(folder)
        if args.controls:
            evaluation["controls"] = run_controls(folder, results, args.workers)
        text = markdown(evaluation)
        (folder / "power.json").write_text(json.dumps(evaluation, indent=1))
        (folder / "power.md").write_text(text + "\n", encoding="utf-8")
        print(f"## {_label(evaluation)} ({folder})\n\n{text}\n")
        evaluations.append(evaluation)
    development, held_out = evaluations[: len(args.folders)], evaluations[len(args.folders):]
    print("## Targets met, across world seeds\n\n" + summary_markdown(development, held_out))
    return evaluations


def main() -> None:
    try:
        run()
    except TiveError as error:
        sys.exit(f"bench_power: {error}")


if __name__ == "__main__":
    main()
