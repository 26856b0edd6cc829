"""`tive score`: task values (mean gradient norm) and instance values (mean in-task cosine)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.io import write_json
from tive.rundir import FEATURES_DIR, TASKS_FILE, ok_rows, open_run_dir, read_manifest, write_manifest
from tive.stages.common import say

def task_info(rows: list[dict[str, Any]], task_values: dict[str, float]) -> dict[str, dict[str, Any]]:
    records = Counter(row["task"] for row in rows)
    ok = Counter(row["task"] for row in ok_rows(rows))
    return {
        task: {"records": records[task], "ok": ok[task], "value": task_values.get(task)}
        for task in sorted(records)
    }


def ok_grad_norms(run_dir: Path, rows: list[dict[str, Any]]) -> np.ndarray:
    """Gradient norms of the ok rows from the manifest, filled from / checked against features/norms.npy."""
    from tive.features.store import load_features

    ok = ok_rows(rows)
    _, norms = load_features(run_dir / FEATURES_DIR, len(ok))
    for row, norm in zip(ok, norms):
        if row.get("grad_norm") is None:
            row["grad_norm"] = float(norm)
        elif not np.isclose(row["grad_norm"], norm, rtol=1e-6, atol=0.0):
            raise TiveError(
                f"{run_dir / 'manifest.jsonl'}: record {row['index']} (id {row['id']!r}) has grad_norm "
                f"{row['grad_norm']} but features/norms.npy says {norm}; they must agree"
            )
    return np.array([row["grad_norm"] for row in ok], dtype=np.float64)


def run_score(run_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Task values (mean gradient norm) and instance values (mean in-task cosine); written to the manifest."""
    from tive.features.store import load_features
    from tive.scoring import instance_values, task_values

    run_dir = open_run_dir(run_dir)
    rows = read_manifest(run_dir)
    ok = ok_rows(rows)
    if not ok:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to score")
    norms = ok_grad_norms(run_dir, rows)
    features, _ = load_features(run_dir / FEATURES_DIR, len(ok))
    tasks = [row["task"] for row in ok]
    values = instance_values(features, tasks)
    for row, value in zip(ok, values):
        row["value"] = float(value)
    write_manifest(run_dir, rows)
    info = task_info(rows, task_values(tasks, norms))
    write_json(run_dir / TASKS_FILE, info)
    say(f"score: {len(ok)} instance values, {len(info)} task values written to manifest.jsonl and tasks.json")
    return info


