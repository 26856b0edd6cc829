"""`tive run`: every stage in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions
from tive.stages.features import run_features
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
    """Every stage in order; finished stages with the same settings are skipped, so a rerun resumes."""
    run_prepare(data, run_dir, prepare)
    run_warmup(run_dir, warmup)
    run_features(run_dir, features)
    run_score(run_dir)
    return run_select(run_dir, select)
