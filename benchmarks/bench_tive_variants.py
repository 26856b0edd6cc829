"""TIVE's selection-time settings on a finished `tive bench` output: which ones move the 15% result?

Reuses the bench's base model, encoded records and selection signals (nothing is recomputed but the subsets
and their training runs) and trains each variant at one budget with the bench's recipe and seeds:

    tive_top        instance choice `top` instead of `sample`
    tive_t1000      the authors' setting (temperature 1000: uniform within a task)
    tive_t1         temperature 1
    tive_t0.03      temperature 0.03 (sharper than the default 0.1)
    tive_sqnorm     task values from the mean *squared* gradient norm

Usage: python benchmarks/bench_tive_variants.py BENCH_OUT_DIR [--budget 0.15] [--seeds 3] [--workers 2]
Writes BENCH_OUT_DIR/variants.json and prints a table next to the bench's tive and random rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from tive.bench.methods import Signals, choose_subset
    from tive.bench.model import Recipe
    from tive.bench.runner import Plan, run_jobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results = json.loads((args.out / "results.json").read_text())
    signal_files = sorted((args.out / "selection").glob("*/bench_signals.npz"))
    saved = np.load(signal_files[-1])
    tasks = [str(t) for t in saved["tasks"]]
    base = Signals(tasks=tasks, grad_norms=saved["grad_norms"], values=saved["values"],
                   task_values=json.loads(str(saved["task_values"])), el2n=saved["el2n"],
                   answer_tokens=saved["answer_tokens"])
    squared = {t: float(np.mean(base.grad_norms[[i for i, x in enumerate(tasks) if x == t]] ** 2))
               for t in base.task_sizes}
    variants = {
        "tive_top": dataclasses.replace(base, choose="top"),
        "tive_t1000": dataclasses.replace(base, temperature=1000.0),
        "tive_t1": dataclasses.replace(base, temperature=1.0),
        "tive_t0.03": dataclasses.replace(base, temperature=0.03),
        "tive_sqnorm": dataclasses.replace(base, task_values=squared),
    }
    recipe = Recipe(**results["plan"]["recipe"])
    plan = Plan(recipe=recipe, workers=args.workers)
    jobs = []
    for name, signals in variants.items():
        for seed in range(args.seeds):
            jobs.append({"method": name, "budget": args.budget, "seed": seed,
                         "positions": choose_subset("tive", signals, args.budget, seed)})
    base_key = json.loads((args.out / "base" / "bench_base.json").read_text())["key"]
    cache = next((args.out / "cache").glob("encoded-*.pt"))
    runs = run_jobs(jobs, plan, base_key, cache, args.out / "base", args.out / "runs_variants")
    reference = [r for r in results["runs"] if r["budget"] == args.budget and r["method"] in ("tive", "random")]
    rows: dict[str, list[float]] = {}
    for run in reference + runs:
        rows.setdefault(run["method"], []).append(run["average"])
    print(f"| variant at {args.budget:g} | average | std over seeds |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.1f} | {np.std(values, ddof=1) if len(values) > 1 else 0:.1f} |")
    (args.out / "variants.json").write_text(json.dumps({"runs": runs, "summary": {
        k: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0] for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
