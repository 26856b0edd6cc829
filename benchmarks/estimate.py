"""How close `tive estimate` comes to the real run: estimate, then run the warm-up and the features, compare.

    python benchmarks/estimate.py [--records 600] [--model small] [--out DIR]

Prints the estimated and the measured wall time of each stage (the stage's own compute: model loading and the
merge are outside both) and their ratio. Target: within ±30% on the `small` preset.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--model", default="small")
    parser.add_argument("--out", default="estimate-bench")
    args = parser.parse_args()

    from tive.config import EstimateOptions, FeaturesOptions, PrepareOptions, WarmupOptions
    from tive.demo_data import make_demo_dataset
    from tive.stages import run_features, run_prepare, run_warmup
    from tive.stages.estimate import run_estimate

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = make_demo_dataset(out / "data", n_records=args.records, seed=0)
    run = out / "run"
    run_prepare(data, run, PrepareOptions(images=str(data.parent / "images"), task_field="dataset"))
    warmup, features = WarmupOptions(model=args.model, device="cpu"), FeaturesOptions(device="cpu")
    estimate = run_estimate(run, warmup, features, EstimateOptions())
    warm = run_warmup(run, warmup)
    started = time.perf_counter()
    run_features(run, features)
    meta = json.loads((run / "features" / "meta.json").read_text())
    measured = {"warmup": warm["seconds"], "features": sum(chunk["seconds"] for chunk in meta["chunks"])}
    print(f"\n`tive estimate` vs the run, {args.records} demo records, --model {args.model}, CPU "
          f"(features stage wall incl. loading: {time.perf_counter() - started:.0f} s):")
    print("| stage | estimated | measured | estimate / measured |")
    print("|---|---|---|---|")
    for stage in ("warmup", "features"):
        guess = estimate[stage]["seconds"]
        print(f"| {stage} | {guess:.0f} s | {measured[stage]:.0f} s | {guess / measured[stage]:.2f} |")


if __name__ == "__main__":
    main()
