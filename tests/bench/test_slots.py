"""Word-like image slots, the bench tokenizer, the cached language prior and cloze scoring (issue 19, items 1-3)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tive.bench import slots
from tive.bench.model import BaseSettings, answer_ids, answer_logliks, build_prior, encode_prompt
from tive.bench.world import WorldSizes, make_scene, pixel_digest, slots_of, world_rng, write_world
from tive.data import check_images, load_dataset
from tive.errors import TiveError

SIZES = WorldSizes(train=200, align=30, eval=8, prior=40)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_world(tmp_path_factory.mktemp("slotworld") / "w", seed=2, sizes=SIZES)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, world: dict) -> Path:
    records = load_dataset(Path(world["prior"])).records
    texts = [t.text() for r in records for t in r.turns]
    out = tmp_path_factory.mktemp("slotmodel") / "m"
    return slots.build_slot_model(out, texts, slots.read_scene_table(Path(world["scenes"])), seed=0,
                                  vocab_size=600)


def test_every_slot_word_is_one_token(model_dir: Path) -> None:
    from tive.model.loading import load_processor

    slots.register()
    tokenizer = load_processor(model_dir).tokenizer
    for word in slots.slot_words():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if word.isdigit():  # a number is one space token, then one token per digit
            assert tokenizer.convert_ids_to_tokens(ids) == ["\u0120", word]
        else:
            assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
        # The same token as an answer (after the role tag) and inside a sentence.
        in_answer = tokenizer(f"<|assistant|>{word}<|end|>", add_special_tokens=False)["input_ids"][1:-1]
        in_sentence = tokenizer(f"The {word}.", add_special_tokens=False)["input_ids"][1:-1]
        assert in_answer == ids and in_sentence == ids
    # Place names are one token per word; a two-digit number is a space and one token per digit.
    assert len(tokenizer("top left", add_special_tokens=False)["input_ids"]) == 2
    assert tokenizer.convert_ids_to_tokens(tokenizer("47", add_special_tokens=False)["input_ids"]) == ["\u0120", "4",
                                                                                                     "7"]


def test_slot_encoder_is_the_scene_of_the_image_alone(world: dict, model_dir: Path) -> None:
    from tive.model.loading import load_base

    model, processor = load_base(model_dir)  # through the product's own loader
    assert type(model).__name__ == "SlotLlavaForConditionalGeneration"
    tokenizer = processor.tokenizer
    dataset = load_dataset(Path(world["eval"]["vqav2"]))
    check_images(dataset, world["images"], on_missing="error")
    from tive.model.encode import load_images

    image = load_images(dataset.records[0])[0]
    scene = slots.read_scene_table(Path(world["scenes"]))[pixel_digest(image)]
    values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    # The same image gives the same slots whatever question comes with it (the processor sees only the image).
    text_a = "<s><|user|><image>What color is the circle?<|end|><|assistant|>"
    text_b = "<s><|user|><image>Is there a red square?<|end|><|assistant|>"
    a = processor(text=[text_a], images=[image], return_tensors="pt")["pixel_values"]
    b = processor(text=[text_b], images=[image.copy()], return_tensors="pt")["pixel_values"]
    assert torch.equal(a, values) and torch.equal(b, values)
    # The image features are the sums of the language model's own embeddings of each cell's words.
    features = model.model.get_image_features(pixel_values=values).pooler_output[0]
    embed = model.get_input_embeddings().weight
    for cell, words in enumerate(scene):
        expected = sum(embed[slots.word_id(tokenizer, w)] for w in words if w is not None)
        assert torch.allclose(features[cell], expected, atol=1e-6)
    # An image the world did not record is refused, naming what to do.
    other = image.copy()
    other.putpixel((0, 0), (1, 2, 3))
    with pytest.raises(TiveError, match="--vision pixels"):
        processor.image_processor(other)


def test_world_records_the_scene_of_every_image(world: dict) -> None:
    table = slots.read_scene_table(Path(world["scenes"]))
    rng = world_rng(0, "test")
    scene = make_scene(rng, 2, 4)
    image = scene.image()
    cells = slots_of(image)
    for item in scene.items:
        assert cells[item.row * 3 + item.col][:2] == [item.color, item.kind]
    assert sum(c[0] == slots.EMPTY for c in cells) == 9 - len(scene.items)
    for name in ("train", "prior", "align"):
        dataset = load_dataset(Path(world[name]))
        check_images(dataset, world["images"], on_missing="error")
        from tive.model.encode import load_images

        for record in dataset.records[:20]:
            for im in load_images(record):
                assert pixel_digest(im) in table


def test_prior_stream_never_holds_a_benchmark_scene(world: dict) -> None:
    from tive.model.encode import load_images

    table = slots.read_scene_table(Path(world["scenes"]))

    def scenes(path: str) -> set[str]:
        dataset = load_dataset(Path(path))
        check_images(dataset, world["images"], on_missing="error")
        return {json.dumps(table[pixel_digest(im)]) for r in dataset.records for im in load_images(r)}

    benchmark = set().union(*(scenes(p) for p in world["eval"].values()))
    assert benchmark and not scenes(world["prior"]) & benchmark


def _records(world: dict, name: str) -> list:
    dataset = load_dataset(Path(world[name]))
    check_images(dataset, world["images"], on_missing="error")
    return dataset.records


def test_prior_cache_key_follows_its_content(world: dict, tmp_path: Path) -> None:
    prior, align = _records(world, "prior")[:12], _records(world, "align")[:6]
    table = slots.read_scene_table(Path(world["scenes"]))
    settings = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600)
    said: list[str] = []
    first, key, _ = build_prior(tmp_path, prior, align, table, settings, say=said.append)
    again, same, _ = build_prior(tmp_path, prior, align, table, settings, say=said.append)
    assert (again, same) == (first, key) and "already trained" in said[-1]
    import dataclasses

    edited = [*prior[:-1], dataclasses.replace(prior[-1], turns=prior[-2].turns)]  # same size, other questions
    other, other_key, _ = build_prior(tmp_path, edited, align, table, settings, say=said.append)
    assert other_key != key and other != first and "trained on" in said[-1]
    _, steps_key, _ = build_prior(tmp_path, prior, align, table, BaseSettings(prior_steps=3, batch_size=4,
                                                                              vocab_size=600), say=said.append)
    assert steps_key != key


def test_prior_key_follows_what_the_slots_hold(world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same prior records, images and settings with another slot encoding (e.g. digits without their column,
    as before) train another prior: one trained on the old slots is never reused."""
    prior, align = _records(world, "prior")[:12], _records(world, "align")[:6]
    table = slots.read_scene_table(Path(world["scenes"]))
    settings = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600)
    _, key, _ = build_prior(tmp_path, prior, align, table, settings, say=lambda _: None)
    old = slots.number_slots

    def digits_without_place(text: str, color: str) -> list:
        return [[w, c, None, None] if w in slots.DIGITS else [w, c, r, p] for w, c, r, p in old(text, color)]

    monkeypatch.setattr(slots, "number_slots", digits_without_place)
    said: list[str] = []
    _, other, _ = build_prior(tmp_path, prior, align, table, settings, say=said.append)
    assert other != key and "trained on" in said[-1]


def test_a_numbers_digits_carry_their_column() -> None:
    """One digit stands in the middle row's center, two at its left and right, in reading order; the other slots
    are empty."""
    assert slots.number_slots("7", "red")[0] == ["7", "red", "middle", "center"]
    two = slots.number_slots("42", "blue")
    assert two[:2] == [["4", "blue", "middle", "left"], ["2", "blue", "middle", "right"]]
    assert two[2:] == [[slots.EMPTY, None, None, None]] * 7 and len(two) == slots.SLOTS
    assert slots.number_slots("07", "red")[:2] == [["0", "red", "middle", "left"], ["7", "red", "middle", "right"]]
    with pytest.raises(TiveError, match="one or two digits"):
        slots.number_slots("123", "red")


def test_cloze_picks_the_option_with_the_highest_summed_loglik(world: dict, model_dir: Path) -> None:
    from tive.bench.evalsets import load_benchmark
    from tive.bench.worker import evaluate
    from tive.model.encode import IGNORE_INDEX
    from tive.model.loading import load_base

    model, processor = load_base(model_dir)
    bench = load_benchmark(world["eval"]["mmbench"], world["images"])
    assert set(bench.metrics) == {"cloze"} and all(len(o) == 4 for o in bench.options)
    prompts = [encode_prompt(processor, r) for r in bench.records]
    options = [[answer_ids(processor, o) for o in opts] for opts in bench.options]
    # answer_logliks is the teacher-forced sum of the answer tokens' log-probabilities after the prompt.
    item, ids = prompts[0], options[0][1]
    full = torch.cat([item["input_ids"], torch.tensor(ids)])
    with torch.inference_mode():
        logp = model(input_ids=full[None], pixel_values=item["pixel_values"]).logits[0].log_softmax(-1)
    start = len(item["input_ids"])
    manual = sum(float(logp[start - 1 + k, t]) for k, t in enumerate(ids))
    assert answer_logliks(model, processor, prompts, [(0, ids)])[0] == pytest.approx(manual, abs=1e-4)
    assert ids[-1] == processor.tokenizer.convert_tokens_to_ids("<|end|>") != IGNORE_INDEX
    # evaluate() answers each cloze record with its best option by summed log-likelihood.
    pairs = [(i, o) for i, opts in enumerate(options) for o in opts]
    values = iter(answer_logliks(model, processor, prompts, pairs))
    chosen = []
    for opts, texts in zip(options, bench.options):
        scores = [next(values) for _ in opts]
        chosen.append(texts[int(np.argmax(scores))])
    expected = 100.0 * sum(c == r for c, r in zip(chosen, bench.references)) / len(chosen)
    entry = {"name": bench.name, "prompts": prompts, "metrics": bench.metrics, "references": bench.references,
             "reference_ids": [answer_ids(processor, r) for r in bench.references], "options": options,
             "option_texts": bench.options}
    logliks: dict[str, float] = {}
    assert evaluate(model, processor, [entry], logliks)["mmbench"] == pytest.approx(expected)
    reference = answer_logliks(model, processor, prompts, list(enumerate(entry["reference_ids"])))
    assert logliks["mmbench"] == pytest.approx(sum(reference) / len(reference), abs=1e-5)


def test_vision_auto_is_slots_for_the_world_and_pixels_for_own_data(tmp_path: Path) -> None:
    from tive.bench.runner import Inputs, resolve_vision

    world_like = Inputs(tmp_path / "t.json", None, None, [], None, scenes=tmp_path / "scenes.json")
    own = Inputs(tmp_path / "t.json", None, None, [], None)
    assert resolve_vision(BaseSettings(), world_like) == "slots"
    assert resolve_vision(BaseSettings(), own) == "pixels"
    assert resolve_vision(BaseSettings(vision="pixels"), world_like) == "pixels"
    with pytest.raises(TiveError, match="--vision pixels"):
        resolve_vision(BaseSettings(vision="slots"), own)


def _skill_shares(examples: list) -> dict[str, float]:
    """The share of each skill among the questions of scene examples (told apart by the generators' phrasings)."""
    kinds: Counter = Counter()
    for example in examples:
        for question, _ in example.turns:
            words = question.split()
            if question.startswith(("Is there a", "Can you see a")):
                kinds["exists"] += 1
            elif question.startswith(("Where is", "In which part")):
                kinds["position"] += 1
            elif question.startswith(("What color is the shape ", "Is the ")) or (
                    question.startswith("What shape is ") and words[3] in ("to", "above", "below")):
                kinds["relation"] += 1
            else:
                kinds["other"] += 1
    total = sum(kinds.values())
    return {k: kinds[k] / total for k in ("exists", "position", "relation", "other")}


def test_prior_stream_weights_the_skills_that_bind_colour_and_shape() -> None:
    from tive.bench.world import PRIOR_SHORT, PRIOR_SKILLS, SHORT, ask_weighted, prior_examples, skill_exists

    examples = prior_examples(world_rng(0, "prior"), 600, set())
    numbers = ("What number", "What is the number", "Which number")
    scenes = [e for e in examples if not e.turns[0][0].startswith(numbers)]
    shares = _skill_shares(scenes)
    weights = dict((skill.__name__, weight) for skill, weight in PRIOR_SKILLS)
    expected = weights["skill_exists"] / sum(weights.values())
    # Existence (always applicable) gets its weight's share; the three binding skills most of the stream.
    assert shares["exists"] == pytest.approx(expected, abs=0.05)
    assert shares["exists"] + shares["position"] + shares["relation"] > 0.6
    # Part of the questions in the short form (the instruction data's and the benchmarks'), answered in one word
    # or phrase; the rest in sentences.
    turns = [t for e in scenes for t in e.turns]
    short = [(q, a) for q, a in turns if q.endswith(SHORT)]
    assert len(short) / len(turns) == pytest.approx(PRIOR_SHORT, abs=0.05)
    assert all(not a.endswith(".") for _, a in short) and {"yes", "no"} <= {a for _, a in short}
    # A skill the scene does not allow is dropped and another drawn by weight.
    rng = np.random.default_rng(0)
    scene = make_scene(rng, 1, 1)
    never = (lambda r, s: None, 100.0)
    for _ in range(20):
        assert ask_weighted(rng, scene, (never, (skill_exists, 1.0)))[1] in ("yes", "no")


def test_caption_phase_mixes_prior_records_and_keys_on_the_share(world: dict, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tive.bench import model as bench_model

    prior, align = _records(world, "prior")[:12], _records(world, "align")[:6]
    table = slots.read_scene_table(Path(world["scenes"]))
    mixed = bench_model.caption_mix(prior, len(align), seed=0)
    share = bench_model.CAPTION_PRIOR_SHARE
    assert len(mixed) == round(len(align) * share / (1 - share)) > 0
    assert {r.record_id for r in mixed} <= {r.record_id for r in prior}
    assert [r.record_id for r in mixed] == [r.record_id for r in bench_model.caption_mix(prior, len(align), 0)]
    settings = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600, epochs=1)
    info = bench_model.build_slot_base(tmp_path / "base", tmp_path / "prior", [], align, prior, table, settings,
                                       say=lambda _: None)
    assert info["prior_records_mixed"] == len(mixed) and info["steps"] == 2  # one pass over the captions
    monkeypatch.setattr(bench_model, "CAPTION_PRIOR_SHARE", 0.0)
    plain = bench_model.build_slot_base(tmp_path / "base", tmp_path / "prior", [], align, prior, table, settings,
                                        say=lambda _: None)
    assert plain["key"] != info["key"] and plain["prior_records_mixed"] == 0 and plain["cached"] is False


def test_caption_phase_trains_at_its_own_learning_rate_and_keeps_the_prior(world: dict, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The caption phase runs at `caption_learning_rate`, not the prior's rate (at the prior's 2e-3 it erased the
    prior's yes/no skill: POPE 65.9 -> 49.4 on world seed 2); the rate is in the base's key, not the prior's."""
    from tive.bench import model as bench_model

    prior, align = _records(world, "prior")[:12], _records(world, "align")[:6]
    table = slots.read_scene_table(Path(world["scenes"]))
    rates: list[float] = []
    train = bench_model.train_model

    def spy(*args: object, learning_rate: float, **kwargs: object) -> list[float]:
        rates.append(learning_rate)
        return train(*args, learning_rate=learning_rate, **kwargs)

    monkeypatch.setattr(bench_model, "train_model", spy)
    settings = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600, epochs=1, learning_rate=2e-3,
                            caption_learning_rate=3e-4)
    first = bench_model.build_slot_base(tmp_path / "base", tmp_path / "prior", [], align, prior, table, settings,
                                        say=lambda _: None)
    assert rates == [2e-3, 3e-4]  # the prior at its rate, then the captions at theirs
    other = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600, epochs=1, learning_rate=2e-3,
                         caption_learning_rate=1e-4)
    second = bench_model.build_slot_base(tmp_path / "base", tmp_path / "prior", [], align, prior, table, other,
                                         say=lambda _: None)
    assert rates == [2e-3, 3e-4, 1e-4]  # the prior is reused from its cache; only the captions run again
    assert second["key"] != first["key"] and second["prior"]["key"] == first["prior"]["key"]


def test_build_prior_reports_each_step_of_a_prior_it_trains_only(world: dict, tmp_path: Path) -> None:
    """`after_step` sees the model being trained after each step (bench_prior_curve.py scores it there); a prior
    taken from the cache is not trained, so it is not called."""
    prior, align = _records(world, "prior")[:12], _records(world, "align")[:6]
    table = slots.read_scene_table(Path(world["scenes"]))
    settings = BaseSettings(prior_steps=2, batch_size=4, vocab_size=600)
    seen: list[tuple[str, int]] = []
    build_prior(tmp_path, prior, align, table, settings, say=lambda _: None,
                after_step=lambda model, processor, step: seen.append((type(model).__name__, step)))
    assert seen == [("SlotLlavaForConditionalGeneration", 1), ("SlotLlavaForConditionalGeneration", 2)]
    build_prior(tmp_path, prior, align, table, settings, say=lambda _: None,
                after_step=lambda model, processor, step: seen.append(("cached", step)))
    assert len(seen) == 2
