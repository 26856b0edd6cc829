"""`tive compare`: the paper's results table for the user's own model, from lmms-eval's result files.

lmms-eval 0.7.3 writes `OUTPUT_PATH/MODEL_NAME_SANITIZED/DATE_results.json`
(`EvaluationTracker.save_results_aggregated`): a JSON object whose `results` maps each task name to
`{"alias": ..., "METRIC,FILTER": value, "METRIC_stderr,FILTER": ..., "samples": n}` (`consolidate_results`;
the filter is `none` unless the task defines filters), beside `configs`, `versions`, `n-shot`,
`higher_is_better`, `n-samples`, `config`, `date` and the tracker's fields. `tive compare` reads those files
(or the folders they are in: the newest `*_results.json` below), labelled by `--label` or the file's / folder's
name, and prints and writes a table: each benchmark as lmms-eval reports it, its % of the full-data model's, and
an average on a 0–100 scale over the benchmarks whose scores are fractions or percentages of correct answers.
Left out of the average, and named: MME (a 2,800-point score: perception of 2,000 plus cognition of 800) and the
benchmarks scored by a GPT judge (LLaVA-Bench, MM-Vet).

The benchmark list is the paper's (TIVE, LLaVA-1.5): the lmms-eval task names were checked against lmms-eval
0.7.3's own task folders (`lmms_eval/tasks/*/*.yaml`, `task:` and `metric_list`), with the splits lmms-eval scores
locally (VQAv2, VizWiz and TextVQA val, MMBench dev; the paper's test-dev figures need the benchmarks' servers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tive.errors import TiveError
from tive.io import write_json, write_text


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the paper as lmms-eval 0.7.3 scores it.

    Attributes:
        name: the paper's name.
        task: lmms-eval's task name.
        metrics: the metric(s) reported (summed when several: MME's perception + cognition).
        scale: the factor that puts the score on 0–100 for the average (100 for fractions, 1 for percentages);
            None leaves it out of the average.
        left_out: why it is left out of the average (None when it is in).
    """

    name: str
    task: str
    metrics: tuple[str, ...]
    scale: float | None
    left_out: str | None = None


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("VQAv2", "vqav2_val", ("exact_match",), 100.0),
    Benchmark("GQA", "gqa", ("exact_match",), 100.0),
    Benchmark("VizWiz", "vizwiz_vqa_val", ("exact_match",), 100.0),
    Benchmark("ScienceQA-IMG", "scienceqa_img", ("exact_match",), 100.0),
    Benchmark("TextVQA", "textvqa_val", ("exact_match",), 100.0),
    Benchmark("POPE", "pope", ("pope_f1_score",), 100.0),
    Benchmark("MME", "mme", ("mme_perception_score", "mme_cognition_score"), None,
              "a 2,800-point score: perception of 2,000 + cognition of 800"),
    Benchmark("MMBench", "mmbench_en_dev", ("gpt_eval_score",), 1.0),
    Benchmark("MMBench-CN", "mmbench_cn_dev", ("gpt_eval_score",), 1.0),
    Benchmark("SEED-Bench", "seedbench", ("seed_image",), 100.0),
    Benchmark("LLaVA-Bench", "llava_in_the_wild", ("gpt_eval_llava_all",), None, "scored by a GPT judge"),
    Benchmark("MM-Vet", "mmvet", ("gpt_eval_score",), None, "scored by a GPT judge"),
)

RESULTS_SUFFIX = "_results.json"


def lmms_eval_tasks() -> str:
    """The `--tasks` value for lmms-eval: the paper's benchmarks, comma-separated."""
    return ",".join(benchmark.task for benchmark in BENCHMARKS)


def find_results_file(path: Path) -> tuple[Path, list[Path]]:
    """`path` itself, or for a folder the newest lmms-eval results file below it (and the others found)."""
    if path.is_file():
        return path, []
    if not path.is_dir():
        raise TiveError(f"{path}: no such file or folder; give lmms-eval's *{RESULTS_SUFFIX} files or their "
                        "--output_path folders")
    found = sorted(path.rglob(f"*{RESULTS_SUFFIX}"), key=lambda p: (p.name, str(p)))
    if not found:
        raise TiveError(f"{path}: no *{RESULTS_SUFFIX} below it; run lmms-eval with --output_path {path} first")
    return found[-1], found[:-1]


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The `results` object of an lmms-eval results file (task -> "metric,filter" -> value).

    Raises:
        TiveError: not JSON, or not the layout lmms-eval writes.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TiveError(f"{path}: not a readable JSON file ({err}); give lmms-eval's *{RESULTS_SUFFIX}") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise TiveError(f"{path}: no 'results' object of tasks; this is not an lmms-eval results file "
                        f"(*{RESULTS_SUFFIX}, written by lmms-eval --output_path)")
    return results


def metric_value(path: Path, task: str, scores: dict[str, Any], metric: str) -> float:
    """The value of `metric` in one task's scores: the `none` filter, or the only filter there is.

    Raises:
        TiveError: the metric is missing, has several filters, or is not a number.
    """
    keys = sorted(key for key in scores if key.split(",", 1)[0] == metric and "," in key)
    key = f"{metric},none" if f"{metric},none" in keys else (keys[0] if len(keys) == 1 else None)
    if key is None:
        what = f"several filters ({', '.join(keys)})" if keys else "no such metric"
        raise TiveError(f"{path}: results['{task}'] has {what} for {metric!r}; its keys: "
                        f"{', '.join(sorted(scores))}")
    value = scores[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TiveError(f"{path}: results['{task}']['{key}'] is {value!r}, not a number")
    return float(value)


@dataclass
class Column:
    """One results file: its label and the benchmarks' scores as lmms-eval reports them."""

    label: str
    path: Path
    scores: dict[str, float]
    others: dict[str, float]


def load_column(path: Path, label: str) -> Column:
    """Read one results file into the benchmarks' scores (and any other task's metrics, by `task: metric`)."""
    results = read_results(path)
    scores: dict[str, float] = {}
    for benchmark in BENCHMARKS:
        if benchmark.task in results:
            scores[benchmark.name] = sum(metric_value(path, benchmark.task, results[benchmark.task], metric)
                                         for metric in benchmark.metrics)
    known = {benchmark.task for benchmark in BENCHMARKS}
    others = {}
    for task, task_scores in sorted(results.items()):
        if task in known:
            continue
        for key, value in sorted(task_scores.items()):
            metric = key.split(",", 1)[0]
            if "," in key and "_stderr" not in metric and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                others[f"{task}: {key}"] = float(value)
    if not scores and not others:
        raise TiveError(f"{path}: no numeric scores in its results")
    return Column(label, path, scores, others)


def _reported(value: float | None) -> str:
    """A score as lmms-eval reports it: fractions to 4 decimals, larger scores to 1."""
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _percent(value: float | None, full: float | None) -> str:
    if value is None or full is None or full == 0:
        return ""
    return f" ({100 * value / full:.1f}%)"


def compare(columns: list[Column], full: str) -> dict[str, Any]:
    """The comparison: per benchmark each column's score and % of `full`'s; the 0–100 average and what it leaves out.

    The average is over the benchmarks with a 0–100 scale that every column has (so the averages are comparable);
    the others are named with the reason.
    """
    labels = [column.label for column in columns]
    reference = next(column for column in columns if column.label == full)
    present = [b for b in BENCHMARKS if any(b.name in column.scores for column in columns)]
    averaged = [b for b in present if b.scale is not None and all(b.name in c.scores for c in columns)]
    left_out = {b.name: b.left_out for b in present if b.scale is None}
    left_out.update({b.name: "missing from " + ", ".join(c.label for c in columns if b.name not in c.scores)
                     for b in present if b.scale is not None and b not in averaged})
    rows = []
    for b in present:
        rows.append({"benchmark": b.name, "task": b.task, "metric": "+".join(b.metrics),
                     "scores": {c.label: c.scores.get(b.name) for c in columns},
                     "percent_of_full": {c.label: (100 * c.scores[b.name] / reference.scores[b.name]
                                                   if b.name in c.scores and reference.scores.get(b.name) else None)
                                         for c in columns}})
    averages = {c.label: (sum(c.scores[b.name] * b.scale for b in averaged) / len(averaged) if averaged else None)
                for c in columns}
    other_keys = sorted({key for c in columns for key in c.others})
    return {
        "labels": labels, "full": full, "files": {c.label: str(c.path) for c in columns}, "rows": rows,
        "average": {"benchmarks": [b.name for b in averaged], "scores": averages,
                    "percent_of_full": {label: (100 * value / averages[full] if value is not None and averages[full]
                                                else None) for label, value in averages.items()}},
        "left_out_of_average": left_out,
        "other_tasks": {key: {c.label: c.others.get(key) for c in columns} for key in other_keys},
    }


def render(table: dict[str, Any]) -> str:
    """The comparison as a Markdown table (what `tive compare` prints and writes)."""
    labels, full = table["labels"], table["full"]
    lines = ["| benchmark (lmms-eval task: metric) | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for row in table["rows"]:
        reference = row["scores"][full]
        cells = [_reported(row["scores"][label]) + ("" if label == full else _percent(row["scores"][label], reference))
                 for label in labels]
        lines.append(f"| {row['benchmark']} ({row['task']}: {row['metric']}) | " + " | ".join(cells) + " |")
    average = table["average"]
    if average["benchmarks"]:
        reference = average["scores"][full]
        cells = [f"{average['scores'][label]:.1f}" + ("" if label == full else
                                                      _percent(average["scores"][label], reference))
                 for label in labels]
        lines.append(f"| **average, 0–100 ({len(average['benchmarks'])} benchmarks)** | " + " | ".join(cells) + " |")
    for key, scores in table["other_tasks"].items():
        reference = scores.get(full)
        cells = [_reported(scores[label]) + ("" if label == full else _percent(scores[label], reference))
                 for label in labels]
        lines.append(f"| {key} (not in the paper's list) | " + " | ".join(cells) + " |")
    notes = [f"% of `{full}` in brackets."]
    if average["benchmarks"]:
        notes.append("The average is over " + ", ".join(average["benchmarks"]) + " (fractions ×100).")
    if table["left_out_of_average"]:
        notes.append("Left out of the average: " + "; ".join(f"{name} ({why})" for name, why in
                                                             table["left_out_of_average"].items()) + ".")
    if table["other_tasks"]:
        notes.append("Tasks not in the paper's list are shown as reported, outside the average.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def run_compare(results: list[str], labels: list[str] | None = None, full: str | None = None,
                out: str | None = None) -> dict[str, Any]:
    """`tive compare RESULTS...`: print the table, write it as Markdown (`--out`) and JSON beside it."""
    from tive.stages.common import say

    if labels and len(labels) != len(results):
        raise TiveError(f"--label given {len(labels)} time(s) for {len(results)} results; give one per result, in "
                        "order, or none (labels are then the file or folder names)")
    columns = []
    for position, given in enumerate(results):
        path, older = find_results_file(Path(given))
        if older:
            say(f"compare: {given}: {len(older) + 1} results files below it; using the newest, {path.name}")
        if labels:
            label = labels[position]
        elif Path(given).is_dir():
            label = Path(given).resolve().name
        else:
            label = path.name[:-len(RESULTS_SUFFIX)] if path.name.endswith(RESULTS_SUFFIX) else path.stem
        columns.append(load_column(path, label))
    names = [column.label for column in columns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TiveError(f"labels {', '.join(duplicates)} name several results; give --label for each")
    if full is None:
        full = "full" if "full" in names else names[0]
    elif full not in names:
        raise TiveError(f"--full {full}: no such label; labels are {', '.join(names)}")
    table = compare(columns, full)
    text = render(table)
    say(text.rstrip("\n"))
    out_path = Path(out or "comparison.md")
    write_text(out_path, text)
    write_json(out_path.with_suffix(".json"), table)
    say(f"compare: {out_path} and {out_path.with_suffix('.json')} (reference: {full})")
    return table
