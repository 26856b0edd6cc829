"""float16 vs float32 feature storage: how much storing the projected gradients in float16 changes the scores.

    python benchmarks/feature_dtype.py RUN_DIR        # a run whose features were stored in float32
    python benchmarks/feature_dtype.py --make DIR     # make one: 600 demo records, --model small, float32

Prints the Spearman correlation of the instance values computed from the float16-rounded features with those
from the float32 features (over all records and within each task), their largest absolute difference, and the
overlap of the top 15% of each task. Norms are stored in float64 either way and task values do not change.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def make_run(out: Path) -> Path:
    from tive.config import FeaturesOptions, PrepareOptions, WarmupOptions
    from tive.demo_data import make_demo_dataset
    from tive.stages import run_features, run_prepare, run_warmup

    data = make_demo_dataset(out / "data", n_records=600, seed=0)
    run = out / "run"
    run_prepare(data, run, PrepareOptions(images=str(data.parent / "images"), task_field="dataset"))
    run_warmup(run, WarmupOptions(model="small", device="cpu"))
    run_features(run, FeaturesOptions(feature_dtype="float32", device="cpu"))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?")
    parser.add_argument("--make", help="make a float32 run in this folder first")
    args = parser.parse_args()
    from tive.scoring import instance_values

    run = make_run(Path(args.make)) if args.make else Path(args.run)
    features = np.load(run / "features" / "features.npy")
    if features.dtype != np.float32:
        raise SystemExit(f"{run}: features are {features.dtype}; this compares float32 with float16")
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    tasks = [row["task"] for row in rows if row["status"] == "ok"]
    full = instance_values(features, tasks)
    half = instance_values(features.astype(np.float16), tasks)
    per_task, overlaps = [], []
    for task in sorted(set(tasks)):
        members = np.array([i for i, t in enumerate(tasks) if t == task])
        per_task.append(spearman(full[members], half[members]))
        k = max(1, round(0.15 * len(members)))
        top_full = set(members[np.argsort(-full[members])[:k]])
        top_half = set(members[np.argsort(-half[members])[:k]])
        overlaps.append(len(top_full & top_half) / k)
    print(f"{len(tasks)} records, {len(set(tasks))} tasks, {features.shape[1]} dims ({run}):")
    print(f"  Spearman of instance values, float16 vs float32: {spearman(full, half):.6f} overall, "
          f"min {min(per_task):.6f} within a task")
    print(f"  largest absolute difference of an instance value: {np.abs(full - half).max():.2e}")
    print(f"  top 15% of each task: {100 * min(overlaps):.1f}% to {100 * max(overlaps):.1f}% the same records")
    print(f"  store size: float32 {features.nbytes / 2**20:.1f} MB, float16 {features.nbytes / 2**21:.1f} MB")


if __name__ == "__main__":
    main()
