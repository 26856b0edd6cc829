"""`tive score`: task values (mean gradient norm) and instance values (mean in-task cosine).

Before scoring, the features are checked against the run as it is now (`check_features_current`): features made
for another warm-up adapter, record set or encoding are refused with the stage to rerun; a store whose chunks are
all done but not yet merged (shards started independently) is completed here. Features brought by the user
(no `features/meta.json`) are taken as they are.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.features.store import NORMS_FILE, FeatureStore
from tive.io import read_json, sha256_file, sha256_json, write_json
from tive.rundir import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    FEATURES_DIR,
    FEATURES_SKIP,
    MANIFEST_FILE,
    TASKS_FILE,
    WARMUP_DIR,
    WARMUP_MARKER,
    ok_rows,
    open_run_dir,
    read_manifest,
    stage_log,
    write_manifest,
)
from tive.stages.common import say


def task_info(run_dir: Path, rows: list[dict[str, Any]], task_values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per task: its records, how many are ok, how many each stage skipped, and its value."""
    records = Counter(row["task"] for row in rows)
    ok = Counter(row["task"] for row in ok_rows(rows))
    by_features = Counter(row["task"] for row in rows if row["status"].startswith(FEATURES_SKIP))
    by_prepare = Counter(row["task"] for row in rows
                         if row["status"] != "ok" and not row["status"].startswith(FEATURES_SKIP))
    marker = run_dir / WARMUP_DIR / WARMUP_MARKER
    warm_skipped = read_json(marker).get("skipped", {}) if marker.is_file() else {}
    by_warmup = Counter(rows[int(index)]["task"] for index in warm_skipped if int(index) < len(rows))
    return {
        task: {
            "records": records[task],
            "ok": ok[task],
            "skipped": {"prepare": by_prepare[task], "features": by_features[task]},
            "warmup_skipped": by_warmup[task],
            "value": task_values.get(task),
        }
        for task in sorted(records)
    }


def check_features_current(run_dir: Path, rows: list[dict[str, Any]], complete: bool) -> None:
    """Refuse features that no longer describe this run (naming the stage to rerun); with `complete`, merge a store
    whose chunks are all done first. Features without a meta.json (brought by the user) pass."""
    from tive.features.completion import complete_when_done
    from tive.model.encode import ENCODING_VERSION

    store = FeatureStore(run_dir / FEATURES_DIR)
    meta = store.meta()
    if meta is None:
        return
    if not meta.get("complete"):
        if not complete:
            raise TiveError(f"{store.dir}: the features are not complete; run `tive score {run_dir}` (or finish "
                            f"`tive features {run_dir}`) first")
        meta = complete_when_done(run_dir, store, "tive score")
        if not meta.get("complete"):
            raise TiveError(f"{store.dir}: the features are not complete (see above for the chunks still to "
                            f"compute); finish `tive features {run_dir}` (every shard) first")
        rows[:] = read_manifest(run_dir)
    adapter = run_dir / WARMUP_DIR / ADAPTER_DIR / ADAPTER_WEIGHTS
    store.check_current(run_dir, adapter_sha256=sha256_file(adapter) if adapter.is_file() else None,
                        encoding_version=ENCODING_VERSION,
                        records_sha256=sha256_json([row["index"] for row in ok_rows(rows)]))


def ok_grad_norms(run_dir: Path, rows: list[dict[str, Any]]) -> np.ndarray:
    """Gradient norms of the ok rows from the manifest, filled from / checked against features/norms.npy."""
    from tive.features.store import load_features

    ok = ok_rows(rows)
    _, norms = load_features(run_dir / FEATURES_DIR, len(ok))
    given = np.array([np.nan if row.get("grad_norm") is None else row["grad_norm"] for row in ok], dtype=np.float64)
    missing = np.isnan(given)
    disagree = np.flatnonzero(~missing & ~np.isclose(given, norms, rtol=1e-6, atol=0.0))
    if len(disagree):
        row = ok[disagree[0]]
        raise TiveError(
            f"{run_dir / MANIFEST_FILE}: record {row['index']} (id {row['id']!r}) has grad_norm {row['grad_norm']} but "
            f"{FEATURES_DIR}/{NORMS_FILE} says {norms[disagree[0]]}; they must agree"
        )
    for position in np.flatnonzero(missing):
        ok[position]["grad_norm"] = float(norms[position])
    given[missing] = norms[missing]
    return given


def run_score(run_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Task values (mean gradient norm) and instance values (mean in-task cosine); written to the manifest."""
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        return _score(run_dir)


def _score(run_dir: Path) -> dict[str, dict[str, Any]]:
    from tive.features.store import load_features
    from tive.scoring import instance_values, task_values

    rows = read_manifest(run_dir)
    check_features_current(run_dir, rows, complete=True)
    ok = ok_rows(rows)
    if not ok:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to score")
    norms = ok_grad_norms(run_dir, rows)
    features, _ = load_features(run_dir / FEATURES_DIR, len(ok))
    tasks = [row["task"] for row in ok]
    values = instance_values(features, tasks)
    for row, value in zip(ok, values):
        row["value"] = float(value)
    for row in rows:
        row["selected"] = None  # a selection made with other values no longer holds
    write_manifest(run_dir, rows)
    info = task_info(run_dir, rows, task_values(tasks, norms))
    write_json(run_dir / TASKS_FILE, info)
    say(f"score: {len(ok)} instance values, {len(info)} task values written to manifest.jsonl and tasks.json")
    return info
