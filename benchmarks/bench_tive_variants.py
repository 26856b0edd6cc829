"""One-factor-at-a-time sweep of TIVE's settings on the bench's development worlds: which change beats the default?

For each world seed (development seeds 0-3 by default; seeds 4 and above are kept for confirmation and never
tuned on) it runs `tive bench` with the default settings at one budget under equal steps (full data, random and
TIVE with the project's defaults, `--seeds` seeds each; a finished default bench in the same folder is reused),
then trains TIVE with one setting changed at a time, same budget, same seeds:

    selection time (the default run's signals; only the subset changes)
      t1000         the authors' temperature (1000: uniform within a task)
      top           instance choice `top` instead of `sample`
      diverse       instance choice `diverse` (value-weighted k-center, beyond the paper)
      sqnorm        task shares from the mean *squared* gradient norm
      alloc_sum     task shares from the sum of gradient norms (mean norm x task size)
      alloc_size    task shares = the input's (TIVE's instance choice within)
      alloc_mix     half the paper's share plus half the input's
      alloc_floor   the paper's shares, each raised to at least half the input's
      no_captions   the caption task excluded, as the authors' code did
    stage settings (TIVE's warm-up and features rerun for each seed)
      proj1024      projection dimension 1024 (default 8192)
      warmup4       warm-up on 4% of the records (default 8%)
      warmup16      warm-up on 16%
      lora_mlp      LoRA on attention and MLP matrices (default: attention only)

Decision rule (the issue's): a variant may replace the default only where its mean gain over the default
exceeds the pooled standard deviation sqrt((s_variant^2 + s_default^2) / 2) on every world.

Usage:
    python benchmarks/bench_tive_variants.py --out SWEEP_DIR [--world-seeds 0,1,2,3] [--seeds 3] [--budget 0.15]
        [--variants t1000,top,...] [--workers N] [--quick]
Writes SWEEP_DIR/sweep.json and SWEEP_DIR/sweep.md (also printed). Reruns resume: every training run, base model
and selection is cached by content in SWEEP_DIR/world-S/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_TASKS = ("textcaps",)

SELECTION_VARIANTS = ("t1000", "top", "diverse", "sqnorm", "alloc_sum", "alloc_size", "alloc_mix", "alloc_floor",
                      "no_captions")
STAGE_VARIANTS = {
    "proj1024": {"proj_dim": 1024},
    "warmup4": {"warmup_fraction": 0.04},
    "warmup16": {"warmup_fraction": 0.16},
    "lora_mlp": {"lora_targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"},
}


def selection_variant(name: str, signals: Any) -> Any:
    """The default run's signals with one selection-time setting changed."""
    from tive.bench.methods import allocation_values

    if name == "t1000":
        return dataclasses.replace(signals, temperature=1000.0)
    if name in ("top", "diverse"):
        return dataclasses.replace(signals, choose=name)
    if name == "sqnorm":
        return dataclasses.replace(signals, task_values=allocation_values(signals, "sqnorm"))
    if name.startswith("alloc_"):
        return dataclasses.replace(signals, task_values=allocation_values(signals, name[len("alloc_"):]))
    if name == "no_captions":
        return dataclasses.replace(signals, exclude_tasks=tuple(t for t in CAPTION_TASKS if t in signals.task_sizes))
    raise SystemExit(f"unknown selection variant {name!r}")


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def sweep_world(root: Path, world_seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tive.bench.methods import choose_subset, task_shares
    from tive.bench.model import BaseSettings, Recipe
    from tive.bench.runner import Plan, SelectionSettings, compute_signals, run_bench, run_jobs, world_inputs
    from tive.bench.world import WorldSizes

    from tive.bench.runner import QUICK

    def settings(cls: type, **fixed: Any) -> Any:
        return cls(**{**(QUICK.get(cls, {}) if args.quick else {}), **fixed})

    out = root / f"world-{world_seed}"
    inputs = world_inputs(out, world_seed, settings(WorldSizes))
    plan = Plan(budgets=(args.budget,), seeds=args.seeds, ablation_budget=args.budget, ablations=(),
                recipes=("steps",), recipe=settings(Recipe), workers=args.workers)
    default = SelectionSettings()
    results = run_bench(out, inputs, plan, settings(BaseSettings, seed=world_seed), default)
    keys, cache_path, base_dir = results["caches"]["keys"], Path(results["caches"]["encoded"]), out / "base"
    items = torch.load(cache_path, weights_only=False)["items"]
    threads = os.cpu_count() or 1

    def signals_for(settings: Any, seed: int) -> Any:
        return compute_signals(inputs, out, base_dir, keys["selection_inputs"], items, settings, threads, seed)[0]

    jobs, shares = [], {}
    for seed in range(args.seeds):
        base_signals = signals_for(default, seed)
        for name in args.variants:
            if name in STAGE_VARIANTS:
                signals = signals_for(dataclasses.replace(default, **STAGE_VARIANTS[name]), seed)
            else:
                signals = selection_variant(name, base_signals)
            positions = choose_subset("tive", signals, args.budget, seed)
            if seed == 0:
                shares[name] = task_shares(signals, positions)
            jobs.append({"method": name, "budget": args.budget, "seed": seed, "positions": positions,
                         "recipe_name": "steps", "steps": plan.recipe.steps})
        if seed == 0:
            for method in ("tive", "random"):
                shares[method] = task_shares(base_signals, choose_subset(method, base_signals, args.budget, 0))
    runs = run_jobs(jobs, plan, keys["encoded"], cache_path, base_dir, out / "runs_variants")
    scores: dict[str, list[float]] = {}
    for run in [*results["runs"], *runs]:
        scores.setdefault(run["method"], []).append(run["average"])
    return {"world_seed": world_seed, "averages": scores, "task_shares": shares, "task_sizes": results["task_sizes"],
            "chance": results["chance"], "at_chance": results.get("at_chance")}


def decide(worlds: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Per variant and world: mean, std, gain over the default and pooled std; whether the rule holds everywhere."""
    rows = []
    for name in ["full", "random", "tive", *variants]:
        row: dict[str, Any] = {"variant": name, "worlds": []}
        for world in worlds:
            mean, std = mean_std(world["averages"][name])
            cell = {"mean": mean, "std": std}
            if name not in ("full", "random", "tive"):
                base_mean, base_std = mean_std(world["averages"]["tive"])
                cell["gain"] = mean - base_mean
                cell["pooled_std"] = math.sqrt((std ** 2 + base_std ** 2) / 2)
            row["worlds"].append(cell)
        if name not in ("full", "random", "tive"):
            row["holds"] = all(c["gain"] > c["pooled_std"] for c in row["worlds"])
            row["mean_gain"] = float(np.mean([c["gain"] for c in row["worlds"]]))
        rows.append(row)
    return rows


def markdown(worlds: list[dict[str, Any]], rows: list[dict[str, Any]], budget: float) -> str:
    seeds = [w["world_seed"] for w in worlds]
    head = (f"| at {budget:g}, equal steps | " + " | ".join(f"world {s}: mean ± std (gain / pooled std)" for s in seeds)
            + " | mean gain | gain > pooled std on every world |")
    lines = [head, "|" + "---|" * (len(seeds) + 3)]
    for row in rows:
        cells = []
        for cell in row["worlds"]:
            text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
            if "gain" in cell:
                text += f" ({cell['gain']:+.1f} / {cell['pooled_std']:.1f})"
            cells.append(text)
        tail = (f"{row['mean_gain']:+.1f} | {'yes' if row['holds'] else 'no'}" if "holds" in row else " | ")
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {tail} |")
    # What each allocation does to the task shares (world of the first seed, seed-0 subsets).
    first = worlds[0]
    tasks = list(first["task_sizes"])
    total = sum(first["task_sizes"].values())
    lines += ["", f"Task shares of the subset (world {first['world_seed']}, seed 0), % of the subset; input = % of "
              "the training records:", "",
              "| rule | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1),
              "| input | " + " | ".join(f"{100 * first['task_sizes'][t] / total:.0f}" for t in tasks) + " |"]
    for name, shares in first["task_shares"].items():
        picked = sum(shares.values())
        lines.append(f"| {name} | " + " | ".join(f"{100 * shares.get(t, 0) / picked:.0f}" for t in tasks) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (a rerun resumes)")
    parser.add_argument("--world-seeds", default="0,1,2,3", help="development world seeds, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="training/selection seeds per variant")
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--variants", default=",".join([*SELECTION_VARIANTS, *STAGE_VARIANTS]),
                        help="comma-separated, from: " + ", ".join([*SELECTION_VARIANTS, *STAGE_VARIANTS]))
    parser.add_argument("--workers", type=int, default=None, help="training processes (default: the bench's)")
    parser.add_argument("--quick", action="store_true", help="the bench's --quick sizes (a smoke test, no evidence)")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in (*SELECTION_VARIANTS, *STAGE_VARIANTS)]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the decision rule compares a gain with the spread over seeds")
    started = time.perf_counter()
    worlds = []
    for text in args.world_seeds.split(","):
        worlds.append(sweep_world(args.out, int(text), args))
        rows = decide(worlds, args.variants)
        table = markdown(worlds, rows, args.budget)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps({"worlds": worlds, "rows": rows, "budget": args.budget,
                                                         "seconds": round(time.perf_counter() - started)}, indent=1))
        (args.out / "sweep.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"sweep: {len(worlds)} worlds in {time.perf_counter() - started:.0f} s; {args.out / 'sweep.md'}")


if __name__ == "__main__":
    main()
