"""`tive demo`: build the offline demo dataset and run the whole pipeline on it."""

from __future__ import annotations

import time
from pathlib import Path

from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions
from tive.demo_data import make_demo_dataset
from tive.stages import run_all, say


def run_demo(out: Path, records: int = 1200, budget: str = "0.15", seed: int = 0) -> Path:
    """Generate the demo data under `out/data`, run every stage into `out/run`; returns the run directory."""
    started = time.perf_counter()
    data_dir = out / "data"
    data_path = make_demo_dataset(data_dir, n_records=records, seed=seed)
    say(f"demo: {records} records of several visual-instruction tasks written to {data_path}")
    run_dir = out / "run"
    run_all(
        data_path,
        run_dir,
        PrepareOptions(images=str(data_dir / "images"), task_field="dataset"),
        WarmupOptions(model="tiny", seed=seed),
        FeaturesOptions(),
        SelectOptions(budget=budget, select_seed=seed),
    )
    subset = next(run_dir.glob("subset.json*"))
    say(
        f"demo: done in {time.perf_counter() - started:.0f} s. Open {run_dir / 'report.html'} in a browser to see "
        f"what was chosen and why. Subset: {subset}; per-record scores: {run_dir / 'manifest.jsonl'}; per-task "
        f"budgets: {run_dir / 'tasks.json'}"
    )
    return run_dir
