"""`tive run`: every stage in order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions
from tive.errors import TiveError
from tive.features.completion import completed_here
from tive.launch import detect_launch
from tive.rundir import PREPARE_FILE
from tive.stages.common import say
from tive.stages.features import POLL_SECONDS, run_features
from tive.stages.prepare import run_prepare
from tive.stages.score import run_score
from tive.stages.select import run_select
from tive.stages.warmup import run_warmup


def run_all(
    data: Path | str,
    run_dir: Path | str,
    prepare: PrepareOptions,
    warmup: WarmupOptions,
    features: FeaturesOptions,
    select: SelectOptions,
) -> dict[str, dict[str, Any]]:
    """Every stage in order; finished stages with the same settings are skipped, so a rerun resumes.

    Under a launcher every process runs prepare (each finds it done or does the same work), the warm-up (its ranks
    train together) and its share of the features; then one process scores and selects: rank 0 of a torchrun /
    srun launch (after it completed the store), or, of independent shards, the one that found every chunk done and
    completed the store (it held the completion's claim: two shards finishing together do not both select). The
    others stop there and say so. Returns the per-task table (empty for those others).
    """
    launch = detect_launch(features.shard)
    if launch.concurrent and launch.rank != 0:  # rank 0 reads the input and checks the images once, for all
        _wait_for_prepare(Path(run_dir), features.wait_timeout)
    run_prepare(data, run_dir, prepare)
    run_warmup(run_dir, warmup, shard=features.shard)
    meta = run_features(run_dir, features)
    # One process scores and selects: rank 0 of a launch; of independent shards, the one that completed the store.
    scores = (launch.rank == 0) if launch.concurrent else (launch.world == 1 or completed_here(meta))
    if not meta.get("complete") or not scores:
        holder = (meta.get("completed_by") or {}).get("process")
        say(f"run: {launch.describe()} is done with its share of the features; "
            + ("rank 0 scores and selects" if launch.concurrent else
               f"{holder}, which completed the store, scores and selects" if holder else
               f"the shard that completes the store scores and selects (or `tive score {run_dir}` then "
               "`tive select`)"))
        return {}
    run_score(run_dir)
    return run_select(run_dir, select)


def _wait_for_prepare(run_dir: Path, timeout: float) -> None:
    """Wait (polling) until rank 0 has committed prepare.json, or give up after `timeout` seconds."""
    started = time.monotonic()
    while not (run_dir / PREPARE_FILE).is_file():
        if time.monotonic() - started > timeout:
            raise TiveError(f"{run_dir / PREPARE_FILE}: rank 0 has not prepared the run after {timeout:g} s; see "
                            "its output (or raise --wait-timeout)")
        time.sleep(POLL_SECONDS)
