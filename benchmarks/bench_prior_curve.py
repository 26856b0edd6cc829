"""How the language prior's skills grow with its steps, scored on the bench's own benchmarks along the way.

    python benchmarks/bench_prior_curve.py BENCH_OUT [--steps 4000] [--every 500] [--benchmarks pope,vqav2,gqa]

Trains a slot prior with the bench's own `model.build_prior` (its tokenizer, initialisation and training loop on
BENCH_OUT's prior stream, the settings at their defaults except `--steps`), cached in BENCH_OUT/phases/prior_curve/,
and every `--every` steps scores it on the world's benchmarks (greedy short
answers, as the bench scores a fine-tuned model). The cosine schedule is the one of a `--steps`-step prior, so the
score at step k is not that of a k-step prior; the last line is the `--steps` prior's own. The measurement behind
`--prior-steps` (README, "Does the selection work?"). BENCH_OUT must hold a finished bench (its `clean` world's
encoded benchmarks).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from tive.bench import model as bench_model
    from tive.bench import worker
    from tive.bench.runner import _load_records
    from tive.bench.slots import read_scene_table, register

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--benchmarks", default="pope,vqav2,gqa")
    parser.add_argument("--world", default="clean")
    args = parser.parse_args(argv)
    caches = sorted((args.out / args.world / "cache").glob("encoded-*.pt"))
    if not caches:
        print(f"{args.out}: no finished bench of world {args.world} (DIR/{args.world}/cache)", file=sys.stderr)
        return 2
    register()
    torch.set_num_threads(1)
    settings = replace(bench_model.BaseSettings(), prior_steps=args.steps)
    world = args.out / args.world / "world"
    prior = _load_records(world / "prior.json", world / "images", None)
    align = _load_records(world / "align.json", world / "images", None)
    table: dict[str, object] = {}
    for scenes in sorted(args.out.glob("*/world/scenes.json")):
        table.update(read_scene_table(scenes))
    wanted = set(args.benchmarks.split(","))
    benchmarks = [b for b in torch.load(caches[-1], weights_only=False)["benchmarks"] if b["name"] in wanted]
    started = time.perf_counter()

    def score(model: object, processor: object, step: int) -> None:
        if step % args.every and step != args.steps:
            return
        model.eval()
        with torch.no_grad():
            scores = worker.evaluate(model, processor, benchmarks)
        print(f"step {step:5d} ({time.perf_counter() - started:4.0f} s): "
              + ", ".join(f"{name} {value:.1f}" for name, value in scores.items()), flush=True)

    # The bench's own build_prior, in a root of its own: a prior already cached there is not trained again (and
    # scored on the way); remove BENCH_OUT/phases/prior_curve to measure again.
    bench_model.build_prior(args.out / "phases" / "prior_curve", prior, align, table, settings, after_step=score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
