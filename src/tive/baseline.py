"""`tive baseline`: a random or task-stratified subset of the same size as the selection, to train beside it.

The question after every selection is "is it better than random on my model?". A baseline answers it only when it
is comparable: the same number of records as the subset (counting a record the subset repeats, so the training
costs the same), all distinct, drawn from the same eligible records (status ok, task not excluded by the
selection), written in the input's own format by the same writer as the subset.

- `random`: a uniform draw without replacement from the eligible records.
- `stratified`: each task gets the input's share of the eligible records, split exactly by largest remainder
  (`tive.select.largest_remainder`, as the selection's budget), then a uniform draw within each task — random
  sampling that keeps the mixture's proportions, so only TIVE's choice of tasks and records differs.

Files: `RUN/baselines/METHOD.json` (`METHOD-seedS.json` when the seed is not 0; the input's suffix, a directory
for `datasets`), described in `RUN/baselines.json` (method, seed, file, records, per task, the selection it
matches). The input is only read.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.io import read_json, write_json
from tive.rundir import PREPARE_FILE, SELECT_FILE, TASKS_FILE, open_run_dir, read_manifest, stage_log
from tive.stages.common import say

BASELINES_DIR = "baselines"
BASELINES_FILE = "baselines.json"
BASELINE_METHODS: tuple[str, ...] = ("random", "stratified")


def baseline_name(method: str, seed: int) -> str:
    """The baseline's file name without its suffix: the method, and the seed when it is not 0."""
    return method if seed == 0 else f"{method}-seed{seed}"


def eligible_rows(run_dir: Path, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The records the selection could choose (status ok, task not excluded), the subset's size, the exclusions.

    Raises:
        TiveError: the run has no selection yet.
    """
    select_path = run_dir / SELECT_FILE
    if not select_path.is_file() or not (run_dir / TASKS_FILE).is_file():
        raise TiveError(f"{run_dir}: no selection yet; run `tive select {run_dir}` first (a baseline has the "
                        "subset's size)")
    if any(row.get("selected") is None for row in rows if row["status"] == "ok"):
        raise TiveError(f"{run_dir / 'manifest.jsonl'}: no selection recorded; run `tive select {run_dir}` first")
    excluded = list(read_json(select_path).get("effective", {}).get("excluded", []))
    eligible = [row for row in rows if row["status"] == "ok" and row["task"] not in set(excluded)]
    size = sum(int(row.get("selected") or 0) for row in rows)
    return eligible, size, excluded


def draw_baseline(tasks: list[str], size: int, method: str, seed: int) -> np.ndarray:
    """Positions (into `tasks`, sorted) of `size` distinct records drawn by `method` with `seed`.

    Args:
        tasks: the task of each eligible record.
        size: how many to draw (at most `len(tasks)`).
        method: `random` (uniform) or `stratified` (the tasks' shares of `tasks`, largest remainder, then uniform
            within each task).
        seed: the seed of the draw.

    Raises:
        TiveError: an unknown method, or more records asked for than there are.
    """
    from tive.select import largest_remainder

    if method not in BASELINE_METHODS:
        raise TiveError(f"--method {method}: unknown; choose one of {', '.join(BASELINE_METHODS)}")
    n = len(tasks)
    if size > n:
        raise TiveError(f"the subset has {size} records (with repeats) but only {n} records are eligible: a baseline "
                        "of distinct records cannot match it; select without --oversample")
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(n, size=size, replace=False))
    sizes = Counter(tasks)
    counts = largest_remainder({task: Fraction(size * count, n) for task, count in sizes.items()}, size)
    labels = np.array(tasks, dtype=object)
    picks = []
    for task in sorted(counts):
        members = np.flatnonzero(labels == task)
        picks.append(rng.choice(members, size=counts[task], replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def run_baseline(run_dir: Path | str, method: str, seed: int = 0) -> dict[str, Any]:
    """Write `RUN/baselines/NAME.<suffix>` and record it in `RUN/baselines.json`; return its entry."""
    from tive.stages.select import _write_subset

    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        if not (run_dir / PREPARE_FILE).is_file():
            raise TiveError(f"{run_dir}: no prepared input (prepare.json), so there are no records to write; a "
                            "baseline needs `tive prepare` / `tive run`")
        rows = read_manifest(run_dir)
        eligible, size, excluded = eligible_rows(run_dir, rows)
        positions = draw_baseline([row["task"] for row in eligible], size, method, int(seed))
        chosen = [eligible[int(position)] for position in positions]
        counts = [0] * len(rows)
        for row in chosen:
            counts[row["index"]] = 1
        name = baseline_name(method, int(seed))
        path = _write_subset(run_dir, counts, out_dir=run_dir / BASELINES_DIR, name=name)
        assert path is not None
        per_task = dict(sorted(Counter(row["task"] for row in chosen).items()))
        subset_per_task = Counter()
        for row in rows:
            subset_per_task[row["task"]] += int(row.get("selected") or 0)
        entry = {
            "method": method,
            "seed": int(seed),
            "file": str(path.relative_to(run_dir)),
            "records": len(chosen),
            "eligible": len(eligible),
            "excluded": excluded,
            "per_task": per_task,
            "subset_records": size,
            "subset_per_task": dict(sorted((task, n) for task, n in subset_per_task.items() if n)),
        }
        index = read_baselines(run_dir)
        index[name] = entry
        write_json(run_dir / BASELINES_FILE, dict(sorted(index.items())))
        say(f"baseline {name}: {len(chosen)} distinct records of {len(eligible)} eligible ({method}, seed {seed}; "
            f"the subset has {size}) -> {path}")
    _rewrite_report(run_dir)
    return entry


def read_baselines(run_dir: Path) -> dict[str, dict[str, Any]]:
    """`RUN/baselines.json`'s entries (empty when no baseline was made)."""
    path = Path(run_dir) / BASELINES_FILE
    return read_json(path) if path.is_file() else {}


def _rewrite_report(run_dir: Path) -> None:
    """Show the new baseline in report.html; the baseline is committed, so a report that fails is said, not fatal."""
    from tive.report import write_report

    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the baseline stands; `tive report` retries
        say(f"baseline: warning: report.html could not be rewritten ({type(err).__name__}: {err}); "
            f"`tive report {run_dir}` retries")


def baselines_section(run_dir: Path) -> str:
    """The report's section on the baselines made in this run (empty when there are none).

    A baseline made for another selection (the subset's size has changed since) is marked stale.
    """
    index = read_baselines(run_dir)
    if not index:
        return ""
    subset: Counter = Counter()
    for row in read_manifest(run_dir):
        subset[row["task"]] += int(row.get("selected") or 0)
    current = sum(subset.values())
    tasks = sorted({task for entry in index.values() for task in entry["per_task"]} | set(+subset))
    head = "<th>the subset</th>" + "".join(f"<th>{escape(name)}</th>" for name in index)
    subset_file = next((p.name for p in sorted(run_dir.glob("subset*"))), "")
    body = [f"<tr><td>file</td><td><code>{escape(subset_file)}</code></td>" + "".join(f"<td><code>{escape(entry['file'])}</code></td>"
                                                   for entry in index.values()) + "</tr>",
            f"<tr><td>records</td><td>{current:,}</td>" + "".join(
                f"<td>{entry['records']:,}" + ("" if entry["subset_records"] == current else
                                               f" <b>(stale: made for a {entry['subset_records']:,}-record subset; "
                                               "run <code>tive baseline</code> again)</b>") + "</td>"
                for entry in index.values()) + "</tr>"]
    for task in tasks:
        body.append(f"<tr><td>{escape(task)}</td><td>{subset.get(task, 0):,}</td>"
                    + "".join(f"<td>{entry['per_task'].get(task, 0):,}</td>" for entry in index.values()) + "</tr>")
    return ("<section id=\"baselines\"><h2>Baselines</h2><p>Subsets of the same size as the selection, of distinct "
            "eligible records, to train beside it (<code>tive baseline</code>): <i>random</i> draws uniformly, "
            "<i>stratified</i> keeps the input's task shares. Records per task, beside the subset's:</p>"
            f"<table><thead><tr><th>task</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>")
