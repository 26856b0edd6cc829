"""`tive select`: split the budget over tasks by value, choose records within each task, write the subset.

The subset is written first, straight from the input (no record is parsed again, no image path resolved: the
input's SHA-256 is checked against prepare's), then the manifest and tasks.json: a crash never leaves a manifest
that describes a subset that is not there. `--authors-compat` reproduces the authors' released selection script
(see `tive.select.authors_budgets`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tive.config import SelectOptions, write_run_config
from tive.data.formats import write_subset_from_input
from tive.errors import TiveError
from tive.io import write_json
from tive.report import task_table, write_report
from tive.rundir import (
    FEATURES_DIR,
    PREPARE_FILE,
    SELECT_FILE,
    TASKS_FILE,
    ok_rows,
    open_run_dir,
    prepared_input,
    read_manifest,
    stage_log,
    write_manifest,
)
from tive.stages.common import say
from tive.stages.score import check_features_current, ok_grad_norms, task_info


def run_select(run_dir: Path | str, options: SelectOptions) -> dict[str, dict[str, Any]]:
    """Split the budget over tasks by value, choose records within each task, write the subset and reports."""
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        info = _select(run_dir, options)
    write_run_config(run_dir, select=options)
    say(what_next(run_dir))
    return info


def _select(run_dir: Path, options: SelectOptions) -> dict[str, dict[str, Any]]:
    from tive.scoring import task_values
    from tive.select import (
        AUTHORS_EXCLUDED_TASK,
        AUTHORS_TEMPERATURE,
        authors_budgets,
        budget_count,
        parse_budget,
        select_records,
    )

    rows = read_manifest(run_dir)
    check_features_current(run_dir, rows, complete=False)
    ok = ok_rows(rows)
    if not ok or any(row.get("value") is None for row in ok):
        raise TiveError(f"{run_dir}: instance values missing from manifest.jsonl; run `tive score {run_dir}` first")
    tasks = [row["task"] for row in ok]
    names = sorted(set(tasks))
    unknown = sorted(set(options.exclude_task) - set(names))
    if unknown:
        raise TiveError(f"--exclude-task {', '.join(unknown)}: no such task; tasks are {', '.join(names)}")
    norms = ok_grad_norms(run_dir, rows)
    values = np.array([row["value"] for row in ok], dtype=np.float64)
    t_values = task_values(tasks, norms)
    budget = parse_budget(options.budget)
    choose, temperature, oversample = options.choose, options.temperature, options.oversample
    excluded = set(options.exclude_task)
    budgets = None
    if options.authors_compat:
        if not isinstance(budget, float):
            raise TiveError(f"--authors-compat --budget {options.budget}: the authors' budget is a fraction p of "
                            "all records; give a fraction such as 0.15")
        choose, temperature, oversample = "sample", AUTHORS_TEMPERATURE, True
        if AUTHORS_EXCLUDED_TASK in names:
            excluded.add(AUTHORS_EXCLUDED_TASK)
        sizes = Counter(tasks)
        kept = [name for name in names if name not in excluded]
        budgets = authors_budgets({name: t_values[name] for name in kept}, {name: sizes[name] for name in kept},
                                  budget, len(ok))
        total = sum(budgets.values())
        described = f"int({budget:g} x {len(ok)} records x share), the authors' rule"
    else:
        eligible = sum(task not in excluded for task in tasks)
        total = budget_count(budget, eligible)
        described = f"{budget:g} x {eligible} eligible records" if isinstance(budget, float) else "a count"
    features = _diverse_features(run_dir, len(ok)) if choose == "diverse" else None
    counts, budgets = select_records(
        tasks, values, t_values, total, method=choose, temperature=temperature, seed=options.select_seed,
        oversample=oversample, exclude_tasks=sorted(excluded), budgets=budgets, features=features,
    )
    selected = [0] * len(rows)
    for row, count in zip(ok, counts):
        selected[row["index"]] = int(count)
    subset_path = _write_subset(run_dir, selected)  # first: the manifest and tasks.json describe what exists
    for row, count in zip(rows, selected):
        row["selected"] = count
    info = task_info(run_dir, rows, t_values)
    chosen = Counter()
    for row in rows:
        chosen[row["task"]] += row["selected"]
    for task, entry in info.items():
        entry["budget"] = int(budgets.get(task, 0))
        entry["selected"] = chosen[task]
        entry["excluded"] = task in excluded
    write_manifest(run_dir, rows)
    write_json(run_dir / SELECT_FILE, {
        "options": asdict(options),
        "effective": {"budget": described, "records": int(counts.sum()), "choose": choose, "temperature": temperature,
                      "oversample": oversample, "excluded": sorted(excluded), "seed": options.select_seed},
    })
    write_json(run_dir / TASKS_FILE, info)  # select's completion marker
    _after_commit(run_dir, "report.html could not be written", lambda: write_report(run_dir, rows))
    _after_commit(run_dir, "the per-task table could not be printed", lambda: say(task_table(info)))
    say(
        f"select: {int(counts.sum())} records (budget {described}; choose={choose}"
        + (f", temperature={temperature:g}" if choose == "sample" else "")
        + (", oversampling" if oversample else "")
        + (f", excluded: {', '.join(sorted(excluded))}" if excluded else "")
        + f", seed={options.select_seed}"
        + (", --authors-compat" if options.authors_compat else "") + ")"
        + (f" -> {subset_path}" if subset_path else "; no prepare.json here, so no subset file was written")
    )
    return info


def _diverse_features(run_dir: Path, n_ok: int) -> np.ndarray:
    """The ok rows' gradient features, reduced for `--choose diverse` (read once, block by block)."""
    from tive.features.store import load_features
    from tive.select import DIVERSE_DIM, reduce_features

    features, _ = load_features(run_dir / FEATURES_DIR, n_ok)
    say(f"select: --choose diverse: {n_ok} feature rows reduced to {min(DIVERSE_DIM, features.shape[1])} dims")
    return reduce_features(features)


def _after_commit(run_dir: Path, what: str, step: Any) -> None:
    """Run `step` (the report, the table); the selection is already committed, so a failure is said, not fatal."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - the subset, manifest and tasks.json stand; `tive report` retries
        say(f"select: warning: {what} ({type(err).__name__}: {err}); the selection is committed (subset, "
            f"manifest.jsonl, tasks.json): `tive report {run_dir}` writes the report again")


def run_report(run_dir: Path | str) -> Path:
    """`tive report`: (re)write RUN/report.html from the run directory."""
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        path = write_report(run_dir)
        say(f"report: {path}")
    return path


def _write_subset(run_dir: Path, selected: list[int], out_dir: Path | None = None,
                  name: str | None = None) -> Path | None:
    """Write the subset from the prepared input (checked unchanged), or None for bring-your-own features.

    `out_dir` and `name` (default: the run directory, `subset`) let `tive baseline` write its subsets the same way.
    """
    info_path = run_dir / PREPARE_FILE
    if not info_path.is_file():
        return None
    data, info = prepared_input(run_dir)
    return write_subset_from_input(data, info["format"], selected, run_dir if out_dir is None else out_dir,
                                   name=name)


def what_next(run_dir: Path) -> str:
    """Where the results are and how to train on the subset with the usual trainers."""
    subset = next((p for p in sorted(run_dir.glob("subset*")) if p.name.startswith("subset")), None)
    lines = ["next:"]
    if subset is not None:
        lines.append(f"  subset:  {subset} (the selected records, unchanged, in the input's format)")
    report = run_dir / "report.html"
    if report.is_file():
        lines.append(f"  report:  {report} (open it in a browser: what was chosen and why)")
    lines.append(f"  scores:  {run_dir / 'manifest.jsonl'} (per record), {run_dir / TASKS_FILE} (per task)")
    if subset is not None:
        lines += [
            f"  baseline: tive baseline {run_dir} --method random (a random subset of the same size, to train "
            "beside it)",
            f"  train:   tive export {run_dir} --for llama-factory (or --for llava): dataset entries, a training "
            "config per subset and the lmms-eval command",
            "  compare: tive compare FULL SUBSET RANDOM (lmms-eval's results: the paper's table for your model)",
        ]
    return "\n".join(lines)
