"""What a slot model answers, skill by skill, in sentences: the language prior alone, or any bench base.

    python benchmarks/bench_prior_skills.py BENCH_OUT [--model DIR] [--n 150]

Questions are asked about the scenes of the world's benchmark images (BENCH_OUT/world; the prior stream never
holds them), with the world's own skill generators (colour, shape, count, existence of a colour+shape pair,
position, relation) in their sentence form, as the prior stream asks them. A greedy answer is right when it
equals the generator's sentence (case and punctuation aside); `first word` counts answers whose first word is
right (yes/no for existence). Default model: the cached prior under BENCH_OUT/prior/ (the newest).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from tive.bench import world as w
    from tive.bench.evalsets import load_benchmark
    from tive.bench.metrics import normalise
    from tive.bench.model import encode_prompt, generate
    from tive.bench.slots import register
    from tive.data.records import Record, Turn
    from tive.model.loading import load_base

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", type=int, default=150)
    args = parser.parse_args(argv)
    register()
    torch.set_num_threads(1)
    model_dir = args.model or max((args.out / "prior").iterdir(), key=lambda p: p.stat().st_mtime)
    model, processor = load_base(model_dir)
    # A bench folder holds one world per kind (DIR/clean/world, ...); an older one held DIR/world.
    world_dir = next((d for d in (args.out / "world", args.out / "clean" / "world", args.out / "mixed" / "world")
                      if d.is_dir()), args.out / "world")
    table = json.loads((world_dir / "scenes.json").read_text())
    images = world_dir / "images"
    from tive.bench.world import pixel_digest
    from tive.model.encode import load_images

    scenes = []
    for name in ("vqav2", "pope", "gqa", "refcoco"):
        for record in load_benchmark(world_dir / "eval" / f"{name}.json", images).records:
            slots = table[pixel_digest(load_images(record)[0])]
            items = [w.Item(s[1], s[0], w.ROWS.index(s[2]), w.COLS.index(s[3]), (0, 0, 1, 1))
                     for s in slots if s[0] != "empty"]
            scenes.append((record, w.Scene(items, "white")))
    rng = np.random.default_rng(0)
    skills = {"colour": w.skill_color, "shape": w.skill_kind, "count": w.skill_count, "exists": w.skill_exists,
              "position": w.skill_position, "relation": w.skill_relation}
    print(f"model {model_dir}")
    print("| skill | exact sentence | first word | n |")
    print("|---|---|---|---|")
    for skill, ask in skills.items():
        prompts, refs = [], []
        for record, scene in scenes:
            qa = ask(rng, scene)
            if qa is None:
                continue
            turns = [Turn("user", [{"type": "image"}, {"type": "text", "text": qa[0]}]), Turn("assistant", qa[2])]
            prompts.append(encode_prompt(processor, Record(index=0, record_id="probe", turns=turns,
                                                           images=record.images, raw={}, image_paths=record.image_paths)))
            refs.append(qa[2])
            if len(refs) == args.n:
                break
        answers = generate(model, processor, prompts)
        exact = np.mean([normalise(a) == normalise(r) for a, r in zip(answers, refs)])
        first = np.mean([normalise(a).split()[:1] == normalise(r).split()[:1] for a, r in zip(answers, refs)])
        print(f"| {skill} | {100 * exact:.1f} | {100 * first:.1f} | {len(refs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
