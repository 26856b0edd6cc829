"""The bench's outputs for people: the paper-style table, the chance-level notes, the timing lines and the plot.

A score means something only above what answering without the image gets (`evalsets.chance_level`). The table
has a `chance` row; a benchmark where the full-data run is within `AT_CHANCE_POINTS` of chance is flagged
(`*` in its column header, and named below the table), and when the full-data *average* is that close to the
average chance level, "% of full" is not meaningful and is printed as `n/m` (it would be a ratio of noise).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

AT_CHANCE_POINTS = 10.0
ORDER = ("full", "random", "random_stratified", "tive", "tive_task_only", "tive_instance_only", "tive_diverse",
         "clusters", "grad_norm_balanced", "el2n_balanced", "length_balanced", "grad_norm", "el2n", "length",
         "tive_lastk", "tive_proxy", "clean_oracle", "task_oracle")
RECIPE_TITLES = {
    "steps": "Equal steps — every run takes the full-data run's optimiser steps: what the data itself teaches",
    "epochs": "Equal epochs — every run takes the full data's number of passes over its subset (the paper's): a "
              "subset also costs its share of the compute",
}


def recipes_of(results: dict[str, Any]) -> list[str]:
    """The recipes the results hold, in the plan's order (results without recipes: equal steps)."""
    return list(results.get("plan", {}).get("recipes") or ["steps"])


def group_runs(results: dict[str, Any], recipe: str = "steps") -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Runs of one recipe grouped by (method, budget), in the table's order: full (shared by every recipe), then
    by budget, random before tive."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in results["runs"]:
        if run["method"] == "full" or run.get("recipe", "steps") == recipe:
            groups[(run["method"], float(run["budget"]))].append(run)
    rank = {m: i for i, m in enumerate(ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != "full", kv[0][1], rank.get(kv[0][0], 99),
                                                       kv[0][0])))


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def chance_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """Chance levels against the full-data run: the benchmarks where full data is within AT_CHANCE_POINTS of
    chance, and whether its average is. None when the results hold no chance levels (older results.json)."""
    chance = results.get("chance")
    full = [r for r in results["runs"] if r["method"] == "full"]
    if not chance or not full:
        return None
    names = results["benchmarks"]
    full_scores = {n: float(np.mean([r["scores"][n] for r in full])) for n in names}
    full_average = float(np.mean([r["average"] for r in full]))
    chance_average = float(np.mean([chance[n] for n in names]))
    return {
        "points": AT_CHANCE_POINTS,
        "benchmarks": [n for n in names if full_scores[n] < chance[n] + AT_CHANCE_POINTS],
        "full_average": full_average,
        "chance_average": chance_average,
        "average_at_chance": full_average < chance_average + AT_CHANCE_POINTS,
    }


def summary_rows(results: dict[str, Any], recipe: str = "steps") -> list[dict[str, Any]]:
    """One row per (method, budget) of one recipe: mean and spread (sample std over seeds) per benchmark and on
    average, and the mean training steps.

    `percent_of_full` is None when there is no full-data run, or when its average is at chance level.
    """
    groups = group_runs(results, recipe)
    full = [r["average"] for r in results["runs"] if r["method"] == "full"]
    full_mean = float(np.mean(full)) if full else None
    chance = chance_summary(results)
    if chance and chance["average_at_chance"]:
        full_mean = None
    rows = []
    for (method, budget), runs in groups.items():
        row = {"method": method, "budget": budget, "seeds": len(runs), "scores": {},
               "steps": float(np.mean([r.get("steps", 0) for r in runs]))}
        for name in results["benchmarks"]:
            row["scores"][name] = _mean_std([r["scores"][name] for r in runs])
        row["average"] = _mean_std([r["average"] for r in runs])
        row["percent_of_full"] = 100.0 * row["average"][0] / full_mean if full_mean else None
        rows.append(row)
    return rows


def summary_table(results: dict[str, Any]) -> str:
    """One Markdown table per recipe, each like the paper's: benchmarks as columns, methods as rows, average and
    % of full; a `chance` row and `*` on benchmarks where full data is at chance level."""
    parts = []
    for recipe in recipes_of(results):
        parts.append(f"**{RECIPE_TITLES.get(recipe, recipe)}**\n\n" + _recipe_table(results, recipe))
    loglik = loglik_table(results)
    if loglik:
        parts.append("**Mean log-likelihood of the reference answer (its tokens and the end of turn, summed; "
                     "mean over records and seeds), equal steps — a lower-noise diagnostic beside accuracy**\n\n"
                     + loglik)
    seeds = max((row["seeds"] for row in summary_rows(results, recipes_of(results)[0])), default=1)
    chance = results.get("chance")
    parts.append(f"Scores are accuracy (%) averaged over {seeds} seed(s); ± is the standard deviation of the average "
                 "over seeds." + (" `chance`: answering without the image." if chance else ""))
    return "\n\n".join(parts)


def loglik_table(results: dict[str, Any], recipe: str = "steps") -> str:
    """Per (method, budget) of `recipe`, each benchmark's mean per-answer log-likelihood of the reference; empty
    when the runs hold none (older results.json)."""
    names = results["benchmarks"]
    groups = group_runs(results, recipe)
    if not any(run.get("logliks") for runs in groups.values() for run in runs):
        return ""
    lines = ["| " + " | ".join(["method", "budget", *names]) + " |", "|" + "---|" * (len(names) + 2)]
    for (method, budget), runs in groups.items():
        cells = [method, f"{budget * 100:g}%"]
        for name in names:
            values = [run["logliks"][name] for run in runs if name in run.get("logliks", {})]
            cells.append(f"{np.mean(values):.2f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _recipe_table(results: dict[str, Any], recipe: str) -> str:
    names = results["benchmarks"]
    chance = results.get("chance")
    summary = chance_summary(results)
    flagged = set(summary["benchmarks"]) if summary else set()
    at_chance = bool(summary and summary["average_at_chance"])
    header = ["method", "budget", "steps", *[n + (" *" if n in flagged else "") for n in names], "average",
              "% of full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if chance:
        cells = ["chance", "-", "-", *[f"{chance[n]:.1f}" for n in names],
                 f"{np.mean([chance[n] for n in names]):.1f}", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    rows = summary_rows(results, recipe)
    for row in rows:
        cells = [row["method"], f"{row['budget'] * 100:g}%", f"{row['steps']:.0f}"]
        cells += [f"{row['scores'][n][0]:.1f}" for n in names]
        mean, std = row["average"]
        cells.append(f"{mean:.1f} ± {std:.1f}" if row["seeds"] > 1 else f"{mean:.1f}")
        if at_chance:
            cells.append("n/m")
        else:
            cells.append(f"{row['percent_of_full']:.1f}" if row["percent_of_full"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chance_lines(results: dict[str, Any]) -> list[str]:
    """The warnings about chance level, for the output and results.md (none when every benchmark is above)."""
    summary = chance_summary(results)
    if not summary:
        return []
    lines = []
    points = f"{summary['points']:g}"
    if summary["benchmarks"]:
        lines.append(f"* at chance: the full-data run scores within {points} points of chance (or below) on "
                     f"{', '.join(summary['benchmarks'])}; differences between methods there are not evidence.")
    if summary["average_at_chance"]:
        lines.append(f"% of full is not meaningful (n/m): the full-data average {summary['full_average']:.1f} is "
                     f"within {points} points of the chance average {summary['chance_average']:.1f}, so the model "
                     "does not measure what the data teaches (does the base model see? see the base model line; "
                     "more steps or --align may help).")
    return lines


def timing_lines(results: dict[str, Any]) -> list[str]:
    """Where the time went: base model, selection (TIVE's stages once), training and evaluation."""
    timing = results["timing"]
    selection = timing["selection"]
    tive_stages = sum(selection.get(k, 0.0) for k in ("prepare", "warmup", "features", "score"))
    per_method: dict[tuple[str, float, str], list[float]] = defaultdict(list)
    for run in results["runs"]:
        recipe = "full" if run["method"] == "full" else run.get("recipe", "steps")
        per_method[(run["method"], float(run["budget"]), recipe)].append(run["train_seconds"])
    lines = [
        f"time: base model {timing['base_model_seconds']:.0f} s"
        + (" (cached)" if timing.get("base_model_cached") else ""),
        f"time: TIVE selection {tive_stages:.0f} s (warm-up {selection.get('warmup', 0):.0f} s, features "
        f"{selection.get('features', 0):.0f} s, score {selection.get('score', 0):.0f} s; over every seed); EL2N "
        f"{selection.get('el2n', 0):.0f} s; choosing every subset {selection.get('choose_all_subsets', 0):.1f} s",
    ]
    full = per_method.get(("full", 1.0, "full"))
    if full:
        text = f"time: training on the full data {np.mean(full):.0f} s per run"
        for recipe in recipes_of(results):
            tive15 = per_method.get(("tive", 0.15, recipe))
            if tive15:
                text += f"; on TIVE's 15% at equal {recipe} {np.mean(tive15):.0f} s"
        lines.append(text + f" (+ selection {tive_stages / max(1, len(results.get('plan', {}).get('seeds', [0]))):.0f} "
                            "s per seed, once)")
    training = timing["training"]
    lines.append(
        f"time: all {training['runs']} runs: training {training['train_seconds_total']:.0f} s, evaluation "
        f"{training['eval_seconds_total']:.0f} s (CPU seconds summed over workers); wall {timing['wall_seconds']:.0f} s"
    )
    return lines


def write_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Average score vs budget per method, with the spread over seeds; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recipes = recipes_of(results)
    fig, axes = plt.subplots(1, len(recipes), figsize=(8 * len(recipes), 5), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        _plot_panel(ax, results, recipe)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_panel(ax: Any, results: dict[str, Any], recipe: str) -> None:
    rows = summary_rows(results, recipe)
    full = [r for r in rows if r["method"] == "full"]
    if full:
        mean, std = full[0]["average"]
        ax.axhline(mean, color="black", linestyle="--", label=f"full data ({mean:.1f})")
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    summary = chance_summary(results)
    if summary:
        ax.axhline(summary["chance_average"], color="gray", linestyle=":",
                   label=f"chance ({summary['chance_average']:.1f})")
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["method"] != "full":
            by_method[row["method"]].append(row)
    markers = "os^vD<>ph*"
    for k, (method, method_rows) in enumerate(sorted(by_method.items(), key=lambda kv: ORDER.index(kv[0])
                                                     if kv[0] in ORDER else 99)):
        method_rows.sort(key=lambda r: r["budget"])
        x = np.array([r["budget"] * 100 for r in method_rows])
        y = np.array([r["average"][0] for r in method_rows])
        e = np.array([r["average"][1] for r in method_rows])
        offset = (k - len(by_method) / 2) * 0.12 if len(method_rows) == 1 else 0.0
        ax.errorbar(x + offset, y, yerr=e, marker=markers[k % len(markers)], capsize=3,
                    linestyle="-" if len(method_rows) > 1 else "none", label=method)
    ax.set_xscale("log")
    budgets = sorted({r["budget"] * 100 for r in rows})
    ax.set_xticks(budgets)
    ax.set_xticklabels([f"{b:g}%" for b in budgets])
    ax.set_xlabel("budget (share of the training records)")
    ax.set_ylabel(f"average accuracy over {len(results['benchmarks'])} benchmarks (%)")
    ax.set_title(f"equal {recipe}: average vs budget (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


DEFECT_TITLES = {"wrong_answer": "wrong answers", "off_format": "off-format answers",
                 "near_duplicate": "near-duplicates"}


def defects_markdown(defects: dict[str, Any]) -> str:
    """The defect table of one world: per method, for each record-level defect the AUROC of its choice score
    (clean above defective; `-` for a method that ranks by no score) and the share of its subset that carries the
    defect (the input's share in the header); for the known-skill and trap tasks, their share of the budget."""
    if not defects:
        return ""
    first = next(iter(defects.values()))
    kinds = list(first["input_share"])
    tasks = list(first["task_input_share"])
    header = ["method"]
    for kind in kinds:
        title = DEFECT_TITLES.get(kind, kind)
        header += [f"{title}: AUROC", f"{title}: chosen % (input {first['input_share'][kind] * 100:.1f})"]
    header += [f"{task}: budget % (input {first['task_input_share'][task] * 100:.1f})" for task in tasks]
    lines = ["**Known defects: what each method chose (AUROC: a clean record scores above a defective one of the "
             "same tasks; 0.5 is blind)**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in defects.items():
        cells = [method]
        for kind in kinds:
            value = row["auroc"].get(kind)
            cells += ["-" if value is None else f"{value:.2f}", f"{row['chosen_share'][kind] * 100:.1f}"]
        cells += [f"{row['task_share'][task] * 100:.1f}" for task in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# One-sided 95% (two-sided 90%) Student t quantiles by degrees of freedom, for the paired intervals.
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812}


def paired(results: dict[str, Any], world: str, method: str, baseline: str = "random", budget: float = 0.15,
           recipe: str = "steps") -> dict[str, Any] | None:
    """`method` minus `baseline` on the same world, budget, recipe and seeds (the same benchmark items): the mean
    paired difference of the average and its 90% interval over seeds (None where fewer than one pair)."""
    def averages(name: str) -> dict[int, float]:
        return {run["seed"]: run["average"] for run in results["runs"]
                if run.get("world", world) == world and run["method"] == name and float(run["budget"]) == budget
                and run.get("recipe", "steps") == recipe}
    ours, theirs = averages(method), averages(baseline)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    d = np.array([ours[s] - theirs[s] for s in seeds])
    mean = float(d.mean())
    if len(d) < 2:
        return {"pairs": len(d), "mean": mean, "low": None, "high": None}
    half = T_95.get(len(d) - 1, 1.645) * float(d.std(ddof=1)) / np.sqrt(len(d))
    return {"pairs": len(d), "mean": mean, "low": mean - half, "high": mean + half}


def paired_markdown(results: dict[str, Any], world: str) -> str:
    """Every method at the ablation budget (first recipe) against random on the same seeds."""
    plan = results.get("plan", {})
    budget = float(plan.get("ablation_budget", 0.15))
    recipe = (plan.get("recipes") or ["steps"])[0]
    methods = [m for m in ORDER if m not in ("full", "random")]
    methods += sorted({r["method"] for r in results["runs"]} - set(ORDER))
    lines = [f"**Paired against random at {budget * 100:g}% (equal {recipe}, same seeds and items): mean difference "
             "of the average, 90% interval**", "", "| method | pairs | difference | 90% interval |", "|---|---|---|---|"]
    for method in methods:
        row = paired(results, world, method, "random", budget, recipe)
        if row is None:
            continue
        interval = "-" if row["low"] is None else f"{row['low']:+.1f} to {row['high']:+.1f}"
        lines.append(f"| {method} | {row['pairs']} | {row['mean']:+.1f} | {interval} |")
    return "\n".join(lines) if len(lines) > 4 else ""


def combined_markdown(output: dict[str, Any], per_world: dict[str, dict[str, Any]]) -> str:
    """results.md of a run over several worlds: each world's tables, paired differences and defect table."""
    parts = [f"# tive bench, world seed {output['world_seed']}: worlds {', '.join(output['worlds'])}"]
    for kind, results in per_world.items():
        design = output["design"].get(kind) or {}
        parts.append(f"## World `{kind}`" + ("" if design else " (no defects)"))
        if design:
            parts.append("\n".join(f"- {name}: {text}" for name, text in design.items()))
        parts.append(summary_table(results))
        for block in (paired_markdown(results, kind), defects_markdown(results.get("defects", {}))):
            if block:
                parts.append(block)
        parts.append("\n".join(chance_lines(results)))
    parts.append(f"Wall time {output['timing']['wall_seconds'] / 60:.1f} min.")
    return "\n\n".join(part for part in parts if part)
