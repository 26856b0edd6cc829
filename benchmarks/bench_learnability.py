"""Does the bench's full-data model learn the world? Per benchmark and per skill, from one training run.

    python benchmarks/bench_learnability.py --out DIR [--records 4000] [--steps 300] [--image-size 32 --patch 8]
        [--hidden 128 --layers 2] [--vision-steps 800 --align 1500] [--learning-rate 2e-3] [--tied-embeddings]

The instrument `tive bench` needs to be (full data ≥ 50 on average, every benchmark ≥ 10 points above chance)
depends on what the tiny model can learn, so this script isolates that question from the selection methods: it
writes the built-in world, pre-trains the base (the bench's own `build_base`, optionally with a wider language
model, another image size / patch size, or the bag-of-words head tied to the language model's input embeddings),
fine-tunes once on all training records, and prints
- each benchmark's accuracy and chance level;
- per skill, 150 fresh single-shape or multi-shape questions (colour, shape, count, existence with easy and hard
  negatives, position, relation, reading printed and handwritten numbers, grounding, multiple choice), so a low
  benchmark can be traced to the skill the model lacks;
- the base model's caption accuracy (exact) on 30 fresh scenes: whether it sees before instruction tuning.
One run, no selection; the figures are the run's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _patch_model_size(args: argparse.Namespace) -> None:
    """Build the base with the requested text-model width/depth and image/patch size."""
    import tive.model.tiny as tiny

    build = tiny.build_tiny_model

    def sized(out_dir, texts, seed, vocab_size=2048, preset="tiny", image_size=32, patch_size=8):
        tiny.PRESETS["learnability"] = {"hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
                                        "num_hidden_layers": args.layers, "num_attention_heads": 4}
        return build(out_dir, texts, seed, vocab_size, "learnability", args.image_size, args.patch)

    tiny.build_tiny_model = sized


def _tie_bag_of_words_head() -> None:
    """The base's bag-of-words phase with per-image-token logits against the language model's input embeddings
    (max over tokens), so each projected image token moves towards the words of what it shows."""
    import torch

    import tive.bench.model as bench_model

    def pretrain_vision(model, processor, records, items, *, steps, batch_size, learning_rate, seed):
        data = bench_model.bag_of_words_data(processor, records, items)
        if data is None or steps < 1:
            return []
        pixel_values, target_matrix = data
        inner, embed = model.model, model.get_input_embeddings()
        scale = torch.nn.Parameter(torch.tensor(1.0))
        params = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(), *embed.parameters(),
                  scale]
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        losses = []
        for _ in range(steps):
            index = torch.randint(0, len(pixel_values), (min(batch_size, len(pixel_values)),), generator=generator)
            tokens = torch.stack(list(inner.get_image_features(pixel_values=pixel_values[index]).pooler_output))
            logits = (tokens @ embed.weight.T).amax(dim=1) * scale
            target = target_matrix[index]
            loss = -(target * logits.log_softmax(-1)).sum(-1).div(target.sum(-1).clamp(min=1)).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        model.eval()
        return losses

    bench_model.pretrain_vision = pretrain_vision


def _skill_suites(seed: int, n: int) -> dict[str, list[tuple[Any, str, str, str]]]:
    """(image, question, reference, metric) per skill, drawn fresh from the world's generators."""
    import numpy as np

    from tive.bench import world as w

    rng = np.random.default_rng(seed)
    suites: dict[str, list[tuple[Any, str, str, str]]] = {}

    def scene_skill(skill, low, high):
        scene = w.make_scene(rng, low, high)
        qa = skill(rng, scene)
        return None if qa is None else (scene.image(), w._short(qa[0]), qa[1], "exact")

    def exists(hard):
        scene = w.make_scene(rng, 1, 3)
        if rng.random() < 0.5:
            item = w._pick(rng, scene.items)
            kind, color, answer = item.kind, item.color, "yes"
        else:
            (kind, color), answer = w._absent_pair(rng, scene, hard=hard), "no"
        return scene.image(), w._short(f"Is there a {color} {kind} in the image?"), answer, "exact"

    def reading(style):
        info, image = w.draw_number(rng, style, held_out=True)
        return image, w._short("What number is written here?"), info.text, "exact"

    def ground():
        scene = w.make_scene(rng, 1, 3)
        item = w._pick(rng, scene.items)
        return scene.image(), f"{w.GROUND}the {item.name}.", w.box_text(item.box), "iou"

    def choice():
        scene = w.make_scene(rng, 1, 3)
        question, letter = w.mc_about_scene(rng, scene)
        return scene.image(), question, letter, "option"

    makers = {
        "color": lambda: scene_skill(w.skill_color, 1, 3), "shape": lambda: scene_skill(w.skill_kind, 1, 3),
        "count": lambda: scene_skill(w.skill_count, 1, 4), "exists (easy negatives)": lambda: exists(False),
        "exists (hard negatives)": lambda: exists(True), "position": lambda: scene_skill(w.skill_position, 1, 3),
        "relation": lambda: scene_skill(w.skill_relation, 3, 5), "read printed": lambda: reading("printed"),
        "read handwritten": lambda: reading("handwritten"), "ground": ground, "multiple choice": choice,
    }
    for name, make in makers.items():
        suites[name] = [item for item in (make() for _ in range(n)) if item is not None]
    return suites


def _prompt(processor: Any, folder: Path, index: int, image: Any, question: str) -> dict[str, Any]:
    from tive.bench.model import encode_prompt
    from tive.data.records import Record, Turn

    path = folder / f"{index}.png"
    image.save(path)
    record = Record(index=index, record_id=index, images=[str(path)], raw={}, image_paths=[path],
                    turns=[Turn("user", [{"type": "image"}, {"type": "text", "text": question}]),
                           Turn("assistant", [{"type": "text", "text": "-"}])])
    return encode_prompt(processor, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--align", type=int, default=1500)
    parser.add_argument("--eval-records", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vision-steps", type=int, default=800)
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--tied-embeddings", action="store_true")
    parser.add_argument("--skill-items", type=int, default=150)
    args = parser.parse_args()

    import numpy as np

    _patch_model_size(args)
    if args.tied_embeddings:
        _tie_bag_of_words_head()
    from tive.bench.evalsets import chance_level, load_benchmarks
    from tive.bench.metrics import score
    from tive.bench.model import BaseSettings, build_base, fresh_copy, generate, train_model
    from tive.bench.runner import _load_records, encode_all
    from tive.bench.worker import evaluate
    from tive.bench.world import WorldSizes, caption_of, make_scene, write_world
    from tive.model.loading import load_base

    out = Path(args.out)
    started = time.perf_counter()
    info = write_world(out / "world", args.world_seed, WorldSizes(args.records, args.align, args.eval_records))
    images = Path(info["images"])
    records = [r for r in _load_records(Path(info["train"]), images, info["task_field"]) if r.ok]
    align = [r for r in _load_records(Path(info["align"]), images, None) if r.ok]
    benchmarks = load_benchmarks([Path(p) for p in info["eval"].values()], images)
    base_info = build_base(out / "base", records, align, BaseSettings(seed=args.world_seed,
                                                                      vision_steps=args.vision_steps,
                                                                      epochs=args.base_epochs), say=print)
    base, processor = load_base(out / "base")
    folder = out / "prompt_images"  # the fresh images the captions and skills are asked about
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    scenes = [make_scene(rng, 1, 3) for _ in range(30)]
    captions = generate(base, processor, [_prompt(processor, folder, k, s.image(), "Give a short caption.")
                                          for k, s in enumerate(scenes)], max_new_tokens=48)
    caption_exact = sum(c == caption_of(s) for c, s in zip(captions, scenes))

    encoded = encode_all(processor, records, benchmarks)
    model = fresh_copy(base)
    trained = time.perf_counter()
    losses = train_model(model, processor, encoded["items"], steps=args.steps, batch_size=32,
                         learning_rate=args.learning_rate, seed=0, freeze_vision=True)
    train_seconds = time.perf_counter() - trained
    scores = evaluate(model, processor, encoded["benchmarks"])
    chance = {b.name: chance_level(b) for b in benchmarks}
    skills = {}
    for name, items in _skill_suites(7, args.skill_items).items():
        prompts = [_prompt(processor, folder, 1000 * len(skills) + k, image, question)
                   for k, (image, question, _, _) in enumerate(items)]
        answers = generate(model, processor, prompts)
        correct = [score(metric, a, ref) for a, (_, _, ref, metric) in zip(answers, items)]
        skills[name] = {"accuracy": round(100 * sum(correct) / len(correct), 1),
                        "commonest_answer": Counter(answers).most_common(1)[0]}
    result = {
        "settings": vars(args),
        "base": {"caption_exact_of_30": caption_exact, "vision_loss_last": base_info.get("vision_loss_last"),
                 "caption_loss_last": base_info.get("loss_last")},
        "train": {"records": len(records), "steps": len(losses), "loss_last": sum(losses[-10:]) / 10,
                  "seconds": round(train_seconds)},
        "benchmarks": {name: {"accuracy": round(scores[name], 1), "chance": round(chance[name], 1)} for name in scores},
        "average": round(sum(scores.values()) / len(scores), 1),
        "chance_average": round(sum(chance.values()) / len(chance), 1),
        "skills": skills,
        "seconds": round(time.perf_counter() - started),
    }
    (out / "learnability.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
