"""Does the bench's full-data model learn the world? Per benchmark and per skill, from one training run.

    python benchmarks/bench_learnability.py --out DIR [--records 4000] [--steps 300] [--image-size 32 --patch 8]
        [--hidden 128 --layers 2] [--vision-steps 800 --align 1500] [--learning-rate 2e-3] [--tied-embeddings]
        [--object-vision] [--qa-stream N --qa-steps S [--qa-skills exists,...]]

The instrument `tive bench` needs to be (full data ≥ 50 on average, every benchmark ≥ 10 points above chance)
depends on what the tiny model can learn, so this script isolates that question from the selection methods: it
writes the built-in world, pre-trains the base (the bench's own `build_base`, optionally with a wider language
model, another image size / patch size, or the bag-of-words head tied to the language model's input embeddings),
fine-tunes once on all training records, and prints
- each benchmark's accuracy and chance level;
- per skill, 150 fresh single-shape or multi-shape questions (colour, shape, count, existence with easy and hard
  negatives, position, relation, reading printed and handwritten numbers, grounding, multiple choice), so a low
  benchmark can be traced to the skill the model lacks;
- the base model's caption accuracy (exact) on 30 fresh scenes: whether it sees before instruction tuning;
- the sentence-form answers (LLaVA-Instruct's phrasing) per skill on 60 fresh scenes, of the base and of the
  fine-tuned model: whether the base itself can look an object up before any short-answer format is taught, and
  whether fine-tuning keeps that skill (a skill kept in sentences but lost in short answers is a format problem).

Two experimental bases answer "is the vision tower or the language model the bottleneck?":
- `--object-vision` replaces the bag-of-words phase with supervision per image token: each token of a 3x3 token
  grid (e.g. `--image-size 48 --patch 16`, one token per cell of the scenes' grid) learns the colour and shape of
  the shape in its cell (or "empty") and its own cell index, and number images their two digits from the
  max-pooled tokens — fresh scenes from the world's generators, labels from their ground truth (`--object-scenes`).
  With `--object-heads tied` the colour and shape logits are dot products with the language model's input
  embeddings of those words, so the image tokens come to look like the question's words. It prints the heads'
  probe accuracies on 500 fresh images.
- `--qa-stream N` adds a third pre-training phase after the captions: `--qa-steps` steps on N fresh sentence-form
  question-answer records (LLaVA-Instruct's generator, or only the skills named in `--qa-skills`), vision frozen —
  a stand-in for a language model that already knows how to answer, far more data than the world's 4,000 records.
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


def _object_vision(args: argparse.Namespace) -> None:
    """The base's vision phase supervised per image token with the scenes' ground truth (see the docstring)."""
    import numpy as np
    import torch

    import tive.bench.model as bench_model
    from tive.bench import world as w
    from tive.demo_data import COLORS, SHAPES

    colors = list(COLORS)
    cells = w.GRID * w.GRID

    def labelled(processor, n, seed):
        rng = np.random.default_rng(seed)
        images, color, kind, tens, units = [], [], [], [], []
        for _ in range(n):
            if rng.random() < 0.8:
                scene = w.make_scene(rng, 1, 5)
                images.append(scene.image())
                c, k = np.zeros(cells, int), np.zeros(cells, int)
                for item in scene.items:
                    c[item.row * w.GRID + item.col] = 1 + colors.index(item.color)
                    k[item.row * w.GRID + item.col] = 1 + SHAPES.index(item.kind)
                color.append(c), kind.append(k), tens.append(-100), units.append(-100)
            else:
                info, image = w.draw_number(rng, "printed" if rng.random() < 0.5 else "handwritten")
                images.append(image)
                color.append(np.full(cells, -100)), kind.append(np.full(cells, -100))
                tens.append(info.number // 10 if info.number >= 10 else 10), units.append(info.number % 10)
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels, *(torch.tensor(np.array(x)) for x in (color, kind, tens, units))

    def pretrain_vision(model, processor, records, items, *, steps, batch_size, learning_rate, seed):
        pixels, color, kind, tens, units = labelled(processor, args.object_scenes, seed + 999)
        inner = model.model
        hidden = model.config.text_config.hidden_size
        heads = torch.nn.ModuleDict({"cell": torch.nn.Linear(hidden, cells), "tens": torch.nn.Linear(hidden, 11),
                                     "units": torch.nn.Linear(hidden, 10)})
        params = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(), *heads.parameters()]
        if args.object_heads == "linear":
            heads["color"] = torch.nn.Linear(hidden, 1 + len(colors))
            heads["kind"] = torch.nn.Linear(hidden, 1 + len(SHAPES))
            params += [*heads["color"].parameters(), *heads["kind"].parameters()]
            color_logits, kind_logits = heads["color"], heads["kind"]
        else:
            # A token's colour / shape logits are its dot products with the language model's input embeddings of
            # the words (the mean of a word's pieces; "empty" has its own vector), so the image tokens learn to
            # look like the words a question uses.
            embed = model.get_input_embeddings()
            pieces = {w: processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in (*colors, *SHAPES)}
            empty = torch.nn.Parameter(torch.zeros(2, hidden))
            scale = torch.nn.Parameter(torch.tensor(1.0))
            params += [*embed.parameters(), empty, scale]

            def tied(flat, words, row):
                table = torch.cat([empty[row : row + 1], torch.stack([embed.weight[pieces[w]].mean(0) for w in words])])
                return scale * flat @ table.T

            def color_logits(flat):
                return tied(flat, colors, 0)

            def kind_logits(flat):
                return tied(flat, SHAPES, 1)

        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        ce = torch.nn.functional.cross_entropy

        def tokens(pixel_values):
            out = torch.stack(list(inner.get_image_features(pixel_values=pixel_values).pooler_output))
            if out.shape[1] != cells:
                raise SystemExit(f"--object-vision needs a {w.GRID}x{w.GRID} token grid (one token per scene cell), "
                                 f"got {out.shape[1]} tokens: use e.g. --image-size 48 --patch 16")
            return out

        model.train()
        losses = []
        for _ in range(steps):
            index = torch.randint(0, len(pixels), (2 * batch_size,), generator=generator)
            out = tokens(pixels[index])
            flat = out.reshape(-1, hidden)
            loss = (ce(color_logits(flat), color[index].reshape(-1), ignore_index=-100)
                    + ce(kind_logits(flat), kind[index].reshape(-1), ignore_index=-100)
                    + ce(heads["cell"](flat), torch.arange(cells).repeat(len(index))))
            if (tens[index] != -100).any():
                pooled = out.amax(dim=1)
                loss = loss + ce(heads["tens"](pooled), tens[index], ignore_index=-100) + ce(
                    heads["units"](pooled), units[index], ignore_index=-100)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        model.eval()
        pixels, color, kind, tens, units = labelled(processor, 500, seed + 4242)
        with torch.no_grad():
            out = tokens(pixels)
            flat, pooled = out.reshape(-1, hidden), out.amax(dim=1)
            scene, number = color.reshape(-1) != -100, tens != -100
            occupied = scene & (color.reshape(-1) > 0)
            probe = {
                "color_per_occupied_cell": (color_logits(flat).argmax(-1) == color.reshape(-1))[occupied],
                "shape_per_occupied_cell": (kind_logits(flat).argmax(-1) == kind.reshape(-1))[occupied],
                "empty_vs_occupied": ((kind_logits(flat).argmax(-1) > 0) == (kind.reshape(-1) > 0))[scene],
                "number": ((heads["tens"](pooled).argmax(-1) == tens) & (heads["units"](pooled).argmax(-1) == units))[number],
            }
        OBJECT_PROBE.update({k: round(100 * float(v.float().mean()), 1) for k, v in probe.items()})
        print(f"object vision ({args.object_heads} heads): probes on 500 fresh images {OBJECT_PROBE}", flush=True)
        return losses

    bench_model.pretrain_vision = pretrain_vision


OBJECT_PROBE: dict[str, float] = {}


def _qa_stream_base(args: argparse.Namespace, out: Path, base_dir: Path, learning_rate: float) -> tuple[Path, dict]:
    """The base after `--qa-steps` more steps on `--qa-stream` fresh sentence-form QA records (its own folder and
    completion marker, so a rerun does not train the base twice)."""
    import numpy as np

    from tive.bench import world as w
    from tive.bench.model import encode, train_model
    from tive.bench.runner import _load_records
    from tive.model.loading import load_base
    from tive.synthetic import Example, to_records, write_records_json

    settings = {"records": args.qa_stream, "steps": args.qa_steps, "skills": args.qa_skills,
                "base": json.loads((base_dir / "bench_base.json").read_text())["key"]}
    target = out / "base_qa"
    marker = target / "qa_stream.json"
    if marker.is_file() and json.loads(marker.read_text())["settings"] == settings:
        return target, json.loads(marker.read_text())
    started = time.perf_counter()
    rng = np.random.default_rng(777)
    if args.qa_skills:
        skills = tuple(getattr(w, "skill_" + name) for name in args.qa_skills.split(",") if name)
        examples = []
        for i in range(args.qa_stream):
            scene = w.make_scene(rng, 1, 4)
            turns = [w.ask(rng, scene, skills) for _ in range(int(rng.integers(1, 3)))]
            examples.append(Example([(q, sentence) for q, _, sentence in turns], scene.image(), f"{i:05d}"))
    else:
        examples = w.task_llava_instruct(rng, args.qa_stream)
    folder = out / "qa_stream"
    write_records_json(folder / "qa.json", to_records(examples, "qa", folder / "images"))
    records = [r for r in _load_records(folder / "qa.json", folder / "images", None) if r.ok]
    model, processor = load_base(base_dir)
    losses = train_model(model, processor, [encode(processor, r) for r in records], steps=args.qa_steps,
                         batch_size=32, learning_rate=learning_rate, seed=args.world_seed, freeze_vision=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    info = {"settings": settings, "loss_first": losses[0], "loss_last": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": round(time.perf_counter() - started)}
    marker.write_text(json.dumps(info, indent=1))
    print(f"qa stream: {len(records)} records, {len(losses)} steps (loss {info['loss_first']:.2f} -> "
          f"{info['loss_last']:.3f}, {info['seconds']} s)", flush=True)
    return target, info


def _sentence_skills(model: Any, processor: Any, folder: Path, n: int) -> dict[str, float]:
    """Exact-sentence accuracy of LLaVA-Instruct-style answers per skill on `n` fresh scenes each (the same scenes
    for every model, so the base and the fine-tuned model are compared on equal items)."""
    import numpy as np

    from tive.bench import world as w
    from tive.bench.model import generate

    rng = np.random.default_rng(5)
    result = {}
    for name, skill, low, high in (("color", w.skill_color, 1, 3), ("shape", w.skill_kind, 1, 3),
                                   ("count", w.skill_count, 1, 4), ("exists", w.skill_exists, 1, 3),
                                   ("position", w.skill_position, 1, 3), ("relation", w.skill_relation, 3, 5)):
        items = []
        while len(items) < n:
            scene = w.make_scene(rng, low, high)
            qa = skill(rng, scene)
            if qa is not None:
                items.append((scene.image(), qa))
        prompts = [_prompt(processor, folder, 50000 + 1000 * len(result) + k, image, qa[0])
                   for k, (image, qa) in enumerate(items)]
        answers = generate(model, processor, prompts, max_new_tokens=32)
        result[name] = round(100 * sum(a == qa[2] for a, (_, qa) in zip(answers, items)) / n, 1)
    return result


QA_SKILLS = ("color", "kind", "count", "exists", "position", "relation")
# The options that shape the base model but are not part of the bench's own base cache key (they patch it here).
BASE_OPTIONS = ("image_size", "patch", "hidden", "layers", "tied_embeddings", "object_vision", "object_heads",
                "object_scenes")


def _check_base_options(parser: argparse.ArgumentParser, out: Path, args: argparse.Namespace) -> None:
    """Refuse to reuse a base built in `out` with other model options (the bench's cache key cannot see them)."""
    path = out / "base_options.json"
    options = {name: getattr(args, name) for name in BASE_OPTIONS}
    if path.is_file():
        old = json.loads(path.read_text())
        if old != options:
            changed = ", ".join(f"--{k.replace('_', '-')} {old.get(k)} -> {v}" for k, v in options.items()
                                if old.get(k) != v)
            parser.error(f"{out} holds a base built with other model options ({changed}); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(options, indent=1))


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
    parser.add_argument("--sentence-items", type=int, default=60, choices=range(1, 1001), metavar="1..1000",
                        help="fresh scenes per skill of the sentence-form probe (base and fine-tuned model)")
    parser.add_argument("--object-vision", action="store_true",
                        help="supervise each image token with its cell's shape (needs a 3x3 token grid)")
    parser.add_argument("--object-scenes", type=int, default=6000, help="labelled images of --object-vision")
    parser.add_argument("--object-heads", choices=("linear", "tied"), default="linear",
                        help="--object-vision's colour/shape heads: linear, or tied to the LM's word embeddings")
    parser.add_argument("--qa-stream", type=int, default=0, help="fresh sentence-form QA records of a third phase")
    parser.add_argument("--qa-steps", type=int, default=1500)
    parser.add_argument("--qa-skills", default="", help="comma-separated skills of the QA stream (default: all)")
    args = parser.parse_args()

    import numpy as np

    _patch_model_size(args)
    if args.tied_embeddings and args.object_vision:
        parser.error("--tied-embeddings and --object-vision replace the same phase: choose one")
    unknown = [name for name in filter(None, args.qa_skills.split(",")) if name not in QA_SKILLS]
    if unknown:
        parser.error(f"--qa-skills: unknown {', '.join(unknown)}; choose from {', '.join(QA_SKILLS)}")
    out = Path(args.out)
    _check_base_options(parser, out, args)
    if args.tied_embeddings:
        _tie_bag_of_words_head()
    if args.object_vision:
        _object_vision(args)
    from tive.bench.evalsets import chance_level, load_benchmarks
    from tive.bench.metrics import score
    from tive.bench.model import BaseSettings, build_base, fresh_copy, generate, train_model
    from tive.bench.runner import _load_records, encode_all
    from tive.bench.worker import evaluate
    from tive.bench.world import WorldSizes, caption_of, make_scene, write_world
    from tive.model.loading import load_base

    started = time.perf_counter()
    info = write_world(out / "world", args.world_seed, WorldSizes(args.records, args.align, args.eval_records))
    images = Path(info["images"])
    records = [r for r in _load_records(Path(info["train"]), images, info["task_field"]) if r.ok]
    align = [r for r in _load_records(Path(info["align"]), images, None) if r.ok]
    benchmarks = load_benchmarks([Path(p) for p in info["eval"].values()], images)
    base_info = build_base(out / "base", records, align, BaseSettings(seed=args.world_seed,
                                                                      vision_steps=args.vision_steps,
                                                                      epochs=args.base_epochs), say=print)
    base_dir, qa_info = out / "base", None
    if args.qa_stream:
        base_dir, qa_info = _qa_stream_base(args, out, base_dir, BaseSettings().learning_rate)
    base, processor = load_base(base_dir)
    folder = out / "prompt_images"  # the fresh images the captions and skills are asked about
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    scenes = [make_scene(rng, 1, 3) for _ in range(30)]
    captions = generate(base, processor, [_prompt(processor, folder, k, s.image(), "Give a short caption.")
                                          for k, s in enumerate(scenes)], max_new_tokens=48)
    caption_exact = sum(c == caption_of(s) for c, s in zip(captions, scenes))
    base_sentences = _sentence_skills(base, processor, folder, args.sentence_items)

    encoded = encode_all(processor, records, benchmarks)
    model = fresh_copy(base)
    trained = time.perf_counter()
    losses = train_model(model, processor, encoded["items"], steps=args.steps, batch_size=32,
                         learning_rate=args.learning_rate, seed=0, freeze_vision=True)
    train_seconds = time.perf_counter() - trained
    scores = evaluate(model, processor, encoded["benchmarks"])
    tuned_sentences = _sentence_skills(model, processor, folder, args.sentence_items)
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
                 "caption_loss_last": base_info.get("loss_last"), "object_probe": OBJECT_PROBE or None,
                 "qa_stream": qa_info, "sentence_skills": base_sentences},
        "train": {"records": len(records), "steps": len(losses), "loss_last": sum(losses[-10:]) / 10,
                  "seconds": round(train_seconds),
                  "sentence_skills": tuned_sentences},
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
