"""`tive estimate` times the real code on a sample and scales it to the whole run, without touching the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tive.cli import main


def test_estimate_projects_the_run_from_timed_steps_and_leaves_the_run_as_it_was(small_data: Path, tmp_path: Path,
                                                                                 capsys):
    run = tmp_path / "run"
    images = str(small_data.parent / "images")
    assert main(["prepare", str(small_data), "--out", str(run), "--images", images, "--task-field", "dataset"]) == 0
    before = sorted(p.name for p in run.iterdir())
    args = ["estimate", str(run), "--model", "tiny", "--proj-dim", "256", "--grad-batch-size", "4", "--device", "cpu"]
    assert main([*args, "--devices", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "estimate.json").read_text())
    assert sorted(p.name for p in run.iterdir()) == sorted(before + ["estimate.json", "base_model"])
    warm, features = result["warmup"], result["features"]
    assert warm["records"] == round(0.08 * 140) and warm["steps"] == math.ceil(warm["records"] / 8) * 4  # tiny: 4 epochs
    assert warm["seconds"] == pytest.approx(warm["steps"] * warm["seconds_per_step"] / 2)
    assert features["records"] == 140 and features["grad_dim"] > 256 and features["proj_dim"] == 256
    assert features["seconds"] == pytest.approx(140 * features["seconds_per_record"] / 2)
    assert result["store_bytes"] == 140 * (256 * 2 + 8)  # float16 features, float64 norms
    assert result["merge_peak_bytes"] == 2 * result["store_bytes"]  # chunks and merged arrays, for a moment
    assert result["total_seconds"] == pytest.approx(warm["seconds"] + features["seconds"])
    assert result["peak_memory_bytes"] > 0 and "feature store:" in printed and "warm-up:" in printed
    # The estimate is what the stages then do: the warm-up's steps and the feature count match.
    from tive.config import WarmupOptions
    from tive.stages import run_warmup

    done = run_warmup(run, WarmupOptions(model="tiny"))
    assert done["steps"] == warm["steps"]
