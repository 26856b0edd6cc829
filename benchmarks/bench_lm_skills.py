"""Can the bench's language model learn a skill when the scene is written in words? One fresh model per skill.

    python benchmarks/bench_lm_skills.py --out DIR [--skills color,present,exists,...] [--records 20000]
        [--steps 1500] [--items 300] [--hidden 128 --layers 2] [--learning-rate 2e-3] [--weight-decay 0]

`bench_learnability.py` shows which benchmark skills the full-data model lacks. This script asks whether the
language model could learn them at all, with vision taken out of the question: every record is text only, the
scene given as the world's own caption ("A red circle at the top left, a blue square in the center, on a white
background.") followed by a question of one skill in the benchmarks' short-answer format. For each skill a fresh
tiny language model (the bench's architecture and tokenizer recipe, randomly initialised, as the bench's base is)
is trained on `--records` such records for `--steps` steps with the bench's own training loop, then answers
`--items` fresh ones with greedy decoding. It prints, per skill, the exact-match accuracy, the chance level (the
commonest reference answer's rate) and the commonest answer the model gave.

Skills: the world's generators (`color`, `kind`, `count`, `exists` with colour+shape, `position`, `relation`) and
`present`, a single-word existence question ("Is there a circle in the image?", half of them absent), the
simplest decision a question can ask. A skill whose accuracy stays at its chance level with the answer always the
same has not been learnt: the model answers from the prior.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

SKILLS = ("color", "kind", "count", "present", "exists", "position", "relation")


def skill_present(rng: Any, scene: Any) -> tuple[str, str, str]:
    """Is a shape of one kind in the scene? Half the questions name a kind that is present."""
    from tive.bench import world as w

    kinds = sorted({item.kind for item in scene.items})
    absent = [kind for kind in w.SHAPES if kind not in kinds]
    kind = w._pick(rng, kinds) if not absent or rng.random() < 0.5 else w._pick(rng, absent)
    answer = "yes" if kind in kinds else "no"
    return f"Is there a {kind} in the image?", answer, answer


def text_examples(skill: str, seed: int, n: int) -> list[tuple[str, str]]:
    """`n` (prompt, short answer) pairs of one skill: the scene's caption, the question, the short-answer suffix."""
    import numpy as np

    from tive.bench import world as w

    ask = skill_present if skill == "present" else getattr(w, "skill_" + skill)
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        scene = w.make_scene(rng, 3, 5) if skill == "relation" else w.make_scene(rng, 1, 4)
        qa = ask(rng, scene)
        if qa is not None:
            out.append((f"{w.caption_of(scene)}\n{w._short(qa[0])}", qa[1]))
    return out


def _records(pairs: list[tuple[str, str]], folder: Path, name: str) -> list[Any]:
    from tive.bench.runner import _load_records
    from tive.synthetic import Example, to_records, write_records_json

    path = folder / f"{name}.json"
    write_records_json(path, to_records([Example([pair]) for pair in pairs], name, folder / "images"))
    return [r for r in _load_records(path, folder / "images", None) if r.ok]


def run_skill(skill: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Train a fresh text-only model on one skill and score it on fresh questions."""
    import tive.model.tiny as tiny
    from tive.bench.model import encode, encode_prompt, generate, train_model
    from tive.model.loading import load_base

    train_pairs = text_examples(skill, args.seed, args.records)
    test_pairs = text_examples(skill, args.seed + 10_000, args.items)
    tiny.PRESETS["lm_skills"] = {"hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
                                 "num_hidden_layers": args.layers, "num_attention_heads": 4}
    tiny.build_tiny_model(folder / "model", [f"{q} {a}" for q, a in train_pairs], seed=args.seed,
                          preset="lm_skills")
    model, processor = load_base(folder / "model")
    train = _records(train_pairs, folder, "train")
    test = _records(test_pairs, folder, "test")
    started = time.perf_counter()
    losses = train_model(model, processor, [encode(processor, r) for r in train], steps=args.steps, batch_size=32,
                         learning_rate=args.learning_rate, seed=args.seed, freeze_vision=True,
                         weight_decay=args.weight_decay)
    answers = [a.strip() for a in generate(model, processor, [encode_prompt(processor, r) for r in test])]
    references = [a for _, a in test_pairs]
    commonest_reference = Counter(references).most_common(1)[0]
    return {
        "accuracy": round(100 * sum(a == b for a, b in zip(answers, references)) / len(references), 1),
        "chance": round(100 * commonest_reference[1] / len(references), 1),
        "commonest_answer": list(Counter(answers).most_common(1)[0]),
        "distinct_answers": len(set(answers)),
        "loss_first": round(losses[0], 3),
        "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 3),
        "seconds": round(time.perf_counter() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--skills", default=",".join(SKILLS), help=f"comma-separated, from {', '.join(SKILLS)}")
    parser.add_argument("--records", type=int, default=20000, help="training records per skill")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--items", type=int, default=300, help="fresh test questions per skill")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="AdamW weight decay (the bench trains with none; decay is grokking's usual lever)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    skills = [s for s in args.skills.split(",") if s]
    unknown = [s for s in skills if s not in SKILLS]
    if unknown or not skills:
        parser.error(f"--skills: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; "
                     f"choose from {', '.join(SKILLS)}")
    if args.hidden % 4:
        parser.error("--hidden must be a multiple of 4 (the model's attention heads)")
    out = Path(args.out)
    results = {}
    for skill in skills:
        results[skill] = run_skill(skill, args, out / skill)
        r = results[skill]
        print(f"{skill:9s} accuracy {r['accuracy']:5.1f}  chance {r['chance']:5.1f}  commonest answer "
              f"{r['commonest_answer'][0]!r} x{r['commonest_answer'][1]}  loss {r['loss_first']:.2f} -> "
              f"{r['loss_last']:.3f}  ({r['seconds']} s)", flush=True)
    report = {"settings": vars(args), "skills": results}
    (out / "lm_skills.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
