"""`tive select`: split the budget over tasks by value, choose records within each task, write the subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tive.config import SelectOptions
from tive.data import write_subset
from tive.errors import TiveError
from tive.io import write_json
from tive.report import task_table
from tive.rundir import PREPARE_FILE, TASKS_FILE, load_prepared, ok_rows, open_run_dir, read_manifest, write_manifest
from tive.stages.common import say
from tive.stages.score import ok_grad_norms, task_info

def run_select(run_dir: Path | str, options: SelectOptions) -> dict[str, dict[str, Any]]:
    """Split the budget over tasks by value, choose records within each task, write the subset and reports."""
    from tive.scoring import task_values
    from tive.select import budget_count, parse_budget, select_records

    run_dir = open_run_dir(run_dir)
    rows = read_manifest(run_dir)
    ok = ok_rows(rows)
    if not ok or any(row.get("value") is None for row in ok):
        raise TiveError(f"{run_dir}: instance values missing from manifest.jsonl; run `tive score {run_dir}` first")
    tasks = [row["task"] for row in ok]
    unknown = sorted(set(options.exclude_task) - set(tasks))
    if unknown:
        raise TiveError(f"--exclude-task {', '.join(unknown)}: no such task; tasks are {', '.join(sorted(set(tasks)))}")
    norms = ok_grad_norms(run_dir, rows)
    values = np.array([row["value"] for row in ok], dtype=np.float64)
    t_values = task_values(tasks, norms)
    eligible = sum(task not in options.exclude_task for task in tasks)
    budget = parse_budget(options.budget)
    total = budget_count(budget, eligible)
    counts, budgets = select_records(
        tasks,
        values,
        t_values,
        total,
        method=options.choose,
        temperature=options.temperature,
        seed=options.seed,
        oversample=options.oversample,
        exclude_tasks=options.exclude_task,
    )
    for row in rows:
        row["selected"] = 0
    for row, count in zip(ok, counts):
        row["selected"] = int(count)
    info = task_info(rows, t_values)
    for task, entry in info.items():
        entry["budget"] = int(budgets.get(task, 0))
        entry["selected"] = sum(row["selected"] for row in rows if row["task"] == task)
        entry["excluded"] = task in options.exclude_task
    write_manifest(run_dir, rows)
    write_json(run_dir / TASKS_FILE, info)
    subset_path = None
    if (run_dir / PREPARE_FILE).is_file():
        dataset, _ = load_prepared(run_dir)
        subset_path = write_subset(dataset, [row["selected"] for row in rows], run_dir)
    say(task_table(info))
    described = f"{budget:g} x {eligible} eligible records" if isinstance(budget, float) else "a count"
    say(
        f"select: {int(counts.sum())} records (budget {described}; choose={options.choose}"
        + (f", temperature={options.temperature}" if options.choose == "sample" else "")
        + f", seed={options.seed})"
        + (f" -> {subset_path}" if subset_path else "; no prepare.json here, so no subset file was written")
    )
    return info


