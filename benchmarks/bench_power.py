"""Can a finished `tive bench` tell methods apart? Its power figures, against the targets the bench is held to.

Reads BENCH_DIR/results.json (a default `tive bench` run on the built-in world) and reports:

- learning: the full-data average (target >= 50 on the 0-100 scale) and each benchmark's distance from its chance
  level (target: no benchmark within 10 points);
- repeatability: the standard deviation over seeds of the full-data average (target <= 1.5) and of random at 15%
  under equal steps (target <= 2.0), and each benchmark's standard error at its worst, 50 / sqrt(n) points for
  n items (an accuracy of 50%; target <= 2 points);
- sensitivity: control runs that train on the full data minus the training task a benchmark depends on (seed 0,
  equal steps) and the drop of that benchmark against the full-data mean (target >= 10 points);
- the bench's wall time (target <= 45 min on 2 cores; a resumed or shared-machine run reads longer).

Usage: python benchmarks/bench_power.py BENCH_DIR [--workers N]
Writes BENCH_DIR/power.json and BENCH_DIR/power.md (also printed). The control runs are cached in
BENCH_DIR/runs_controls/.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

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


def main() -> None:
    from tive.bench.model import Recipe
    from tive.bench.runner import Plan, run_jobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a finished tive bench output folder")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    results = json.loads((args.out / "results.json").read_text())
    names = results["benchmarks"]
    full = [r for r in results["runs"] if r["method"] == "full"]
    random15 = [r for r in results["runs"] if r["method"] == "random" and r["budget"] == 0.15
                and r["recipe"] == "steps"]
    sizes = {name: len(json.loads(Path(path).read_text())) for name, path in
             zip(names, results["inputs"]["evals"])}
    full_scores = {name: float(np.mean([r["scores"][name] for r in full])) for name in names}
    full_average = float(np.mean([r["average"] for r in full]))

    saved = np.load(Path(results["caches"]["selection"][0]) / "bench_signals.npz")
    tasks = np.array([str(t) for t in saved["tasks"]])
    recipe = Recipe(**results["plan"]["recipe"])
    plan = Plan(recipe=recipe, workers=args.workers)
    jobs = []
    for bench, task in CONTROLS.items():
        if bench not in names or task not in set(tasks):
            continue
        positions = np.flatnonzero(tasks != task)
        jobs.append({"method": f"full_minus_{task}", "budget": round(len(positions) / len(tasks), 4), "seed": 0,
                     "positions": positions, "recipe_name": "steps", "steps": recipe.steps, "benchmark": bench})
    keys = results["caches"]["keys"]
    controls = run_jobs([{k: v for k, v in j.items() if k != "benchmark"} for j in jobs], plan, keys["encoded"],
                        Path(results["caches"]["encoded"]), args.out / "base", args.out / "runs_controls")

    rows = []
    for name in names:
        chance = results["chance"][name]
        rows.append({"benchmark": name, "items": sizes[name], "full": full_scores[name],
                     "full_std": std([r["scores"][name] for r in full]), "chance": chance,
                     "above_chance": full_scores[name] - chance,
                     "standard_error": 50 / math.sqrt(sizes[name])})
    drops = []
    for job, run in zip(jobs, controls):
        bench = job["benchmark"]
        drops.append({"benchmark": bench, "removed_task": job["method"][len("full_minus_"):],
                      "control": run["scores"][bench], "drop": full_scores[bench] - run["scores"][bench]})
    summary = {
        "full_average": full_average,
        "full_std": std([r["average"] for r in full]),
        "random15_average": float(np.mean([r["average"] for r in random15])) if random15 else None,
        "random15_std": std([r["average"] for r in random15]) if random15 else None,
        "wall_seconds": results["timing"].get("wall_seconds"),
        "benchmarks": rows,
        "controls": drops,
    }
    checks = [
        ("full-data average >= 50", f"{full_average:.1f}", full_average >= 50),
        ("no benchmark within 10 points of chance",
         ", ".join(f"{r['benchmark']} {r['above_chance']:+.1f}" for r in rows),
         all(r["above_chance"] >= 10 for r in rows)),
        ("full-data std over seeds <= 1.5", f"{summary['full_std']:.2f}", summary["full_std"] <= 1.5),
        ("random 15% std over seeds <= 2.0", f"{summary['random15_std']:.2f}" if random15 else "not run",
         bool(random15) and summary["random15_std"] <= 2.0),
        ("each benchmark's standard error (at 50%) <= 2",
         ", ".join(f"{r['benchmark']} {r['standard_error']:.2f}" for r in rows),
         all(r["standard_error"] <= 2 for r in rows)),
        ("each control drops its benchmark >= 10",
         ", ".join(f"{d['benchmark']} {d['drop']:+.1f}" for d in drops),
         bool(drops) and all(d["drop"] >= 10 for d in drops)),
    ]
    summary["checks"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in checks]
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in checks]
    lines += ["", "| benchmark | items | full data (std) | chance | above chance | standard error at 50% |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['items']} | {r['full']:.1f} ({r['full_std']:.1f}) | {r['chance']:.1f} | "
              f"{r['above_chance']:+.1f} | {r['standard_error']:.2f} |" for r in rows]
    lines += ["", "| control: full data without | benchmark | full data | control | drop |", "|---|---|---|---|---|"]
    lines += [f"| {d['removed_task']} | {d['benchmark']} | {full_scores[d['benchmark']]:.1f} | {d['control']:.1f} | "
              f"{d['drop']:+.1f} |" for d in drops]
    text = "\n".join(lines)
    (args.out / "power.json").write_text(json.dumps(summary, indent=1))
    (args.out / "power.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
