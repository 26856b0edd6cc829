"""`tive select --authors-compat` gives the task values and per-task subset sizes of the authors' released selection
script, computed here independently from the same norms and features, the way that script computes them."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tive.cli import main

SIZES = {"textcaps": 40, "a": 100, "b": 7, "c": 61}


@pytest.fixture
def byo_run(tmp_path: Path) -> Path:
    """A bring-your-own run directory: tasks with different norms, `b` small and hard enough to be oversampled."""
    rng = np.random.default_rng(0)
    tasks = [task for task, size in SIZES.items() for _ in range(size)]
    rng.shuffle(tasks)
    scale = {"textcaps": 1.0, "a": 1.0, "b": 9.0, "c": 2.5}
    norms = np.array([scale[t] * rng.uniform(0.5, 1.5) for t in tasks])
    features = rng.normal(size=(len(tasks), 16)).astype(np.float32) + rng.normal(size=16).astype(np.float32)
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    np.save(run / "features" / "features.npy", features)
    np.save(run / "features" / "norms.npy", norms)
    rows = [{"index": i, "id": f"r{i}", "task": t, "status": "ok", "grad_norm": None} for i, t in enumerate(tasks)]
    (run / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def authors_script(tasks: list[str], norms: np.ndarray, features: np.ndarray, p: float) -> tuple[dict, dict, np.ndarray]:
    """The released script's arithmetic: task value = mean norm (TextCaps left out), ds_size = value / Σ value ·
    p · len(data) with len(data) counting TextCaps, int() sizes, whole repeats when ds_size reaches the task's size;
    instance value = mean over the task of normalised dot products."""
    sums, members = defaultdict(float), defaultdict(list)
    for i, task in enumerate(tasks):
        if task == "textcaps":
            continue
        sums[task] += norms[i]
        members[task].append(i)
    values = {task: sums[task] / len(members[task]) for task in sums}
    total = sum(values.values())
    selected_data_size = p * len(tasks)
    sizes = {}
    for task in members:
        ds_size = values[task] / total * selected_data_size
        n = len(members[task])
        sizes[task] = int(ds_size) if ds_size < n else int(ds_size // n) * n + int(ds_size % n)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    influence = np.full(len(tasks), np.nan)
    for task, rows in members.items():
        influence[rows] = (unit[rows] @ unit[rows].T).mean(axis=1)
    return values, sizes, influence


def test_authors_compat_reproduces_the_released_script(byo_run: Path):
    assert main(["score", str(byo_run)]) == 0
    assert main(["select", str(byo_run), "--budget", "0.15", "--authors-compat", "--select-seed", "3"]) == 0
    rows = [json.loads(line) for line in (byo_run / "manifest.jsonl").read_text().splitlines()]
    tasks = [row["task"] for row in rows]
    norms = np.load(byo_run / "features" / "norms.npy")
    features = np.load(byo_run / "features" / "features.npy").astype(np.float64)
    values, sizes, influence = authors_script(tasks, norms, features, 0.15)
    info = json.loads((byo_run / "tasks.json").read_text())
    for task, size in sizes.items():
        assert info[task]["value"] == pytest.approx(values[task], rel=1e-12)
        assert info[task]["budget"] == info[task]["selected"] == size
    assert info["textcaps"]["excluded"] and info["textcaps"]["selected"] == 0
    assert sizes["b"] > SIZES["b"]  # the case that oversamples: every record of b repeated, the rest drawn
    b_counts = [row["selected"] for row in rows if row["task"] == "b"]
    assert min(b_counts) == sizes["b"] // SIZES["b"] and sum(b_counts) == sizes["b"]
    kept = [i for i, t in enumerate(tasks) if t != "textcaps"]
    np.testing.assert_allclose([rows[i]["value"] for i in kept], influence[kept], atol=1e-9)
    # int() truncation: a few records short of p · N, which the project's own rule meets exactly.
    assert sum(sizes.values()) < 0.15 * len(rows)
    assert sum(sizes.values()) >= math.floor(0.15 * len(rows)) - len(sizes)


def test_the_default_rule_differs_where_the_authors_truncate_and_count_excluded_tasks(byo_run: Path):
    assert main(["score", str(byo_run)]) == 0
    assert main(["select", str(byo_run), "--budget", "0.15", "--exclude-task", "textcaps"]) == 0
    rows = [json.loads(line) for line in (byo_run / "manifest.jsonl").read_text().splitlines()]
    eligible = sum(size for task, size in SIZES.items() if task != "textcaps")
    assert sum(row["selected"] for row in rows) == round(0.15 * eligible)
    assert max(row["selected"] for row in rows) == 1  # no repeats without --oversample


def test_authors_compat_needs_a_fraction(byo_run: Path, capsys):
    assert main(["score", str(byo_run)]) == 0
    assert main(["select", str(byo_run), "--budget", "30", "--authors-compat"]) == 2
    assert "give a fraction" in capsys.readouterr().err
