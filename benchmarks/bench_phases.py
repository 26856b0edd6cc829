"""Learning rates of the slot base's caption phase and of fine-tuning, measured on a finished bench folder.

    python benchmarks/bench_phases.py BENCH_OUT [--world clean] [--caption-lr 2e-3,5e-4] [--lr 2e-3,7e-4]
                                      [--seeds 4] [--oracle] [--none] [--split-noise]

For each caption learning rate it builds the slot base with the bench's own `build_slot_base` from BENCH_OUT's
cached language prior (the same captions, prior records mixed in and steps as `tive bench`; into
BENCH_OUT/phases/caption_<lr>, kept; a prior cached under other settings is trained again first), scores
the base on the world's benchmarks, then fine-tunes it at each learning rate on full data (seed 0) and on
random 15% subsets (`--seeds`, uniform over the training records), and with `--oracle` on subsets uniform over
the world's non-defective records (a world with defects). `--none` adds the prior without a caption phase.
`--split-noise` splits random 15%'s spread into its two sources: the same subsets trained at one seed (which
records a subset holds) and the first subset trained at every seed (the training run's own noise).
It prints per base and rate the mean and std of the average over seeds and the mean of each benchmark: the
measurement behind the defaults `--caption-learning-rate` and `--learning-rate` (README, "Does the selection
work?"). Uses the bench's own encoded records (BENCH_OUT/WORLD/cache) and training loop; equal steps (the
full-data run's), batch 32.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def caption_base(out: Path, world_dirs: list[Path], rate: float | None, settings: object) -> Path:
    """The base with the caption phase at `rate`, built by the bench's own `build_slot_base` from out's cached
    prior into out/phases/caption_<rate> (kept); `rate` None: the cached prior itself, without a caption phase."""
    from dataclasses import replace

    from tive.bench import model as bench_model
    from tive.bench.runner import _load_records
    from tive.bench.slots import read_scene_table

    world_dir = world_dirs[0]
    align = _load_records(world_dir / "align.json", world_dir / "images", None)
    prior = _load_records(world_dir / "prior.json", world_dir / "images", None)
    table: dict[str, object] = {}
    for other in world_dirs:
        table.update(read_scene_table(other / "scenes.json"))
    if rate is None:
        prior_dir, _, _ = bench_model.build_prior(out / "prior", prior, align, table, settings)
        return prior_dir
    target = out / "phases" / f"caption_{rate:g}"
    bench_model.build_slot_base(target, out / "prior", [], align, prior, table,
                                replace(settings, caption_learning_rate=rate))
    return target


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from tive.bench import worker
    from tive.bench.model import BaseSettings, Recipe, fresh_copy, train_model
    from tive.bench.slots import register

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--world", default="clean")
    parser.add_argument("--caption-lr", default="2e-3,5e-4")
    parser.add_argument("--lr", default="2e-3,7e-4")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--none", action="store_true", help="also the prior without a caption phase")
    parser.add_argument("--split-noise", action="store_true",
                        help="also split random 15%%'s spread: subsets varied at training seed 0, and subset 0 "
                             "trained with seeds varied")
    args = parser.parse_args(argv)
    register()
    torch.set_num_threads(2)
    base_info = json.loads((args.out / "base" / "bench_base.json").read_text())
    settings = BaseSettings(**{k: v for k, v in base_info["settings"].items() if k in BaseSettings.__dataclass_fields__})
    worlds = sorted(p for p in args.out.iterdir() if (p / "world" / "scenes.json").is_file())
    world_dirs = [args.out / args.world / "world", *(p / "world" for p in worlds if p.name != args.world)]
    caches = sorted((args.out / args.world / "cache").glob("encoded-*.pt"))
    if not caches:
        print(f"{args.out}: no finished bench of world {args.world} (its cache and prior) found", file=sys.stderr)
        return 2
    rates: list[float | None] = ([None] if args.none else []) + [float(x) for x in args.caption_lr.split(",")]
    recipe = Recipe()
    for rate in rates:
        base = caption_base(args.out, world_dirs, rate, settings)
        worker.init(str(caches[-1]), str(base), 2)
        state = worker._STATE
        n = len(state["items"])
        size = round(args.budget * n)
        scores = worker.evaluate(state["model"], state["processor"], state["benchmarks"])
        label = "prior alone" if rate is None else f"caption lr {rate:g}"
        print(f"\n{label}: base " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()), flush=True)
        # Per method, its runs as (positions, training seed); run s of a method trains at seed s unless said.
        random_subsets = [random.Random(1000 + s).sample(range(n), size) for s in range(args.seeds)]
        runs: dict[str, list[tuple[list[int], int]]] = {"full": [(list(range(n)), 0)]}
        runs["random"] = [(p, s) for s, p in enumerate(random_subsets)]
        if args.oracle:
            truth = json.loads((args.out / args.world / "world" / "defects.json").read_text())
            bad = {r["index"] for r in truth["records"]}
            clean = [i for i in range(n) if i not in bad]
            runs["clean_oracle"] = [(random.Random(2000 + s).sample(clean, size), s) for s in range(args.seeds)]
        if args.split_noise:  # only one of the two varies
            runs["random, seed fixed"] = [(p, 0) for p in random_subsets]
            runs["random, subset fixed"] = [(random_subsets[0], s) for s in range(args.seeds)]
        for lr in (float(x) for x in args.lr.split(",")):
            for method, jobs in runs.items():
                averages, per_bench = [], []
                for positions, seed in jobs:
                    model = fresh_copy(state["model"])
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        train_model(model, state["processor"], [state["items"][p] for p in positions],
                                    steps=recipe.steps, batch_size=recipe.batch_size, learning_rate=lr, seed=seed,
                                    freeze_vision=True)
                    result = worker.evaluate(model, state["processor"], state["benchmarks"])
                    averages.append(sum(result.values()) / len(result))
                    per_bench.append(list(result.values()))
                std = float(np.std(averages, ddof=1)) if len(averages) > 1 else 0.0
                means = np.mean(per_bench, axis=0)
                print(f"  lr {lr:g} {method:20s} average {np.mean(averages):5.1f} ± {std:.2f} | "
                      + ", ".join(f"{k} {v:.1f}" for k, v in zip(result, means)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
