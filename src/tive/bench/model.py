"""The bench's model side: the pre-trained tiny base, fine-tuning on a subset, greedy evaluation.

Default vision (`BaseSettings.vision`, issue 19): word-like image slots (`tive.bench.slots`) and a cached
language prior: the slot model is first trained on the world's prior stream (sentence-form questions about
fresh slot scenes, never a benchmark's item; `build_prior`, cached under out/prior/ by its content), then on the
alignment captions mixed with prior records (`CAPTION_PRIOR_SHARE`), then instruction-tuned as below. The pixel path (`vision="pixels"`, and every run on your
own data, which has no recorded scenes) is the one described next.

The base is the project's tiny LLaVA (model/tiny.py) with its tokenizer learned from the training and alignment
texts, then pre-trained on the alignment captions in two phases (`BaseSettings`): the vision tower and projector
first learn a bag-of-words objective on max-pooled image tokens (the miniature of CLIP's pre-training, which
the real LLaVA inherits), then the projector and language model learn to write the captions (LLaVA's
alignment stage). Instruction tuning then starts from a model that already sees and describes images, as in the
paper.

Fine-tuning follows LLaVA-1.5's stage 2: the projector and the language model are trained, the vision tower is
frozen; AdamW, cosine schedule with 3% warm-up steps, one recipe for every subset (see `Recipe`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tive.bench.options import check_fields
from tive.config import opt
from tive.data.records import Record
from tive.errors import TiveError

MAX_NEW_TOKENS = 24

# The version of `train_model`'s training loop, part of the base model's cache key (and so of every later cache):
# 2 = random batches (1 sorted batches by length, which kept yes/no answers from being learnt; see _random_batches).
TRAINING_LOOP = 2
MICRO_BATCH = 8  # records per forward pass of a training step (see train_model)


RECIPES = ("steps", "epochs")


@dataclass(frozen=True)
class Recipe:
    """How every subset is fine-tuned, in two recipes the bench reports side by side.

    - `steps` (equal steps): every run takes the same number of optimiser steps, so every subset gets the same
      compute and any difference between methods comes from the data alone — the measure of content.
    - `epochs` (equal epochs, the paper's): every run takes as many passes over its subset as the full-data run
      over the full data, so a 15% subset costs 15% of the compute — the measure of what a user saves.

    The full-data run is the same in both (`steps` steps). Measured on world seed 1 with the earlier 300-step
    default: full data keeps improving past ~400 steps, and at equal epochs a 15% subset gets 15% of the steps.

    Attributes:
        steps: optimiser steps of the full-data run, and of every run under equal steps.
        batch_size: records per optimiser step.
        learning_rate: AdamW peak learning rate (cosine schedule, 3% linear warm-up).
        freeze_vision: keep the vision tower frozen (LLaVA-1.5's stage 2).
    """

    steps: int = opt(300, "optimiser steps of the full-data run (and of every run under equal steps)", min=1)
    batch_size: int = opt(32, "records per optimiser step of the fine-tuning runs", min=1)
    learning_rate: float = opt(7e-4, "AdamW peak learning rate of the fine-tuning runs", above=0)
    freeze_vision: bool = True

    def __post_init__(self) -> None:
        check_fields(self)

    def steps_for(self, recipe: str, n_records: int, n_full: int) -> int:
        """Optimiser steps of a run on `n_records` of the `n_full` training records under `recipe`."""
        if recipe == "steps":
            return self.steps
        if recipe == "epochs":
            return max(1, round(self.steps * n_records / n_full))
        raise TiveError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")


@dataclass(frozen=True)
class BaseSettings:
    """How the base model is made: tokenizer + random init from `seed`, then pre-training on the alignment set.

    Pre-training has two phases, on the alignment records (with your own data and no `--align`, the bag-of-words
    phase runs on the training records' images and their answers' words, and the caption phase is skipped: see
    `runner.alignment_sources`). First the vision tower and projector learn
    to predict which content words the caption contains (a bag-of-words objective on max-pooled image tokens,
    the miniature of CLIP's image-text pre-training, `vision_steps`); then the projector and the language model
    learn to write the captions with the vision tower frozen (LLaVA's alignment stage, `epochs`). Without the
    first phase the tiny model never leaves the "blind" plateau: its language model learns the captions'
    priors and ignores the image tokens (measured on world seed 1: caption loss stuck at the image-free level
    for 1,500 steps, the same caption for every image; with 800 bag-of-words steps the caption loss falls from
    0.67 to 0.22 in the same 282 caption steps). Mean-pooling instead of max-pooling leaves the vision tower on
    a plateau too: one shape is one of 16 patches.
    """

    seed: int = 0
    vision_steps: int = opt(800, "base model: bag-of-words steps of the vision tower and projector",
                            flag="--base-vision-steps", min=0)
    epochs: int = opt(6, "base model: caption-alignment passes over the alignment records", flag="--base-epochs",
                      min=0)
    batch_size: int = opt(32, "base model: records per pre-training step", flag="--base-batch-size", min=1)
    learning_rate: float = opt(2e-3, "base model: pre-training learning rate", flag="--base-learning-rate", above=0)
    vocab_size: int = 2048
    vision: str = opt("auto", "the base model's vision: slots (word-like slots from the built-in world's recorded "
                      "scenes, and a language prior), pixels (a CLIP tower on pixels), auto (slots for the built-in "
                      "world, pixels for --train data)", choices=("auto", "slots", "pixels"))
    prior_steps: int = opt(4000, "slot base: optimiser steps of the language prior on the prior stream",
                           flag="--prior-steps", min=0)
    caption_learning_rate: float = opt(5e-4, "slot base: learning rate of the caption phase after the prior (lower "
                                       "than the prior's, so the prior's skills survive it)",
                                       flag="--caption-learning-rate", above=0)
    size: str = "tiny"  # the slot model's language model: tiny, or proxy (`slots.SLOT_SIZES`, for tive_proxy)

    def __post_init__(self) -> None:
        check_fields(self)


BASE_MARKER = "bench_base.json"
PRIOR_MARKER = "bench_prior.json"
# The slot base's caption phase draws this share of its records from the prior stream, so the prior's answers
# (yes/no, places, relations) survive the captions instead of being overwritten by them (measured: without it the
# base answered none of 200 POPE questions with yes or no). Part of the base's cache key.
CAPTION_PRIOR_SHARE = 0.5


def _tokenizer_texts(prior: Sequence[Record], align: Sequence[Record]) -> list[str]:
    """What the slot tokenizer learns from: the prior stream, the captions and the world's fixed instructions
    (never the training records, so one prior serves every training set of a world seed)."""
    from tive.bench import world

    fixed = [world.SHORT, world.MC_SUFFIX, world.GROUND, world.REGION, *world.OCR_QUESTIONS]
    return [*(t.text() for r in (*prior, *align) for t in r.turns), *fixed]


def build_prior(prior_root: Path, prior: Sequence[Record], align: Sequence[Record], table: dict[str, Any],
                settings: BaseSettings, say: Any = print,
                after_step: Callable[[Any, Any, int], None] | None = None) -> tuple[Path, str, dict[str, Any]]:
    """The slot model trained on the prior stream (issue 19, item 2), cached in prior_root/<key>.

    `after_step(model, processor, step)`, when given, is called after each training step of a prior that is
    trained (not of a cached one): `benchmarks/bench_prior_curve.py` scores the prior along the way with it.

    The key holds the training loop, the settings the prior depends on, the prior records' content (turns and
    image digests) and the captions (the tokenizer learns from both). Returns (directory, key, info).
    """
    import torch

    from tive.bench.keys import record_content
    from tive.bench.slots import build_slot_model, slot_encoding
    from tive.io import sha256_json
    from tive.model.loading import load_base

    key = sha256_json({
        "training_loop": TRAINING_LOOP,
        "settings": {k: getattr(settings, k) for k in ("seed", "vocab_size", "prior_steps", "batch_size",
                                                       "learning_rate")},
        **({"size": settings.size} if settings.size != "tiny" else {}),
        "slot_encoding": slot_encoding(),
        "prior": [record_content(r) for r in prior],
        "align": [[t.text() for t in r.turns] for r in align],
    })
    prior_dir = prior_root / key[:12]
    marker = prior_dir / PRIOR_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        say(f"bench: language prior already trained ({prior_dir})")
        return prior_dir, key, json.loads(marker.read_text())
    started = time.perf_counter()
    build_slot_model(prior_dir, _tokenizer_texts(prior, align), table, seed=settings.seed,
                     vocab_size=settings.vocab_size, preset=settings.size)
    model, processor = load_base(prior_dir)
    losses: list[float] = []
    if prior and settings.prior_steps:
        items = [encode(processor, r) for r in prior]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            losses = train_model(model, processor, items, steps=settings.prior_steps,
                                 batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                 seed=settings.seed, freeze_vision=True,
                                 after_step=None if after_step is None
                                 else lambda step: after_step(model, processor, step))
        model.save_pretrained(prior_dir)
    info = {"key": key, "records": len(prior), "steps": len(losses),
            "loss_first": losses[0] if losses else None,
            "loss_last": float(sum(losses[-10:]) / len(losses[-10:])) if losses else None,
            "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(info, indent=1) + "\n")
    say(f"bench: language prior trained on {len(prior)} prior records, {len(losses)} steps"
        + (f" (loss {info['loss_first']:.2f} -> {info['loss_last']:.2f})" if losses else "")
        + f" ({info['seconds']:.0f} s)")
    return prior_dir, key, info


def build_slot_base(base_dir: Path, prior_root: Path, train: Sequence[Record], align: Sequence[Record],
                    prior: Sequence[Record], table: dict[str, Any], settings: BaseSettings,
                    say: Any = print) -> dict[str, Any]:
    """The slot base: the cached prior (`build_prior`), its image table set to every recorded scene of the world,
    then the caption alignment phase on `align` mixed with prior records (`caption_mix`; the steps are those of
    `epochs` passes over `align` alone). Cached in `base_dir` by content (prior key, mix share, captions, table)."""
    import shutil

    import torch

    from tive.bench.keys import record_content
    from tive.bench.slots import register, slot_ids
    from tive.io import sha256_json
    from tive.model.loading import load_base

    register()
    prior_dir, prior_key, prior_info = build_prior(prior_root, prior, align, table, settings, say=say)
    key = sha256_json({
        "training_loop": TRAINING_LOOP,
        "vision": "slots",
        "settings": _settings_key(settings),
        "prior": prior_key,
        "caption_prior_share": CAPTION_PRIOR_SHARE,
        "align": [record_content(r) for r in align],
        "table": sha256_json(table),
    })
    marker = base_dir / BASE_MARKER
    if (cached := _cached_base(base_dir, key, say)) is not None:
        return cached
    started = time.perf_counter()
    if base_dir.exists():
        shutil.rmtree(base_dir)
    shutil.copytree(prior_dir, base_dir)
    (base_dir / PRIOR_MARKER).unlink()
    model, processor = load_base(base_dir)
    processor.image_processor.table = {d: slot_ids(processor.tokenizer, s) for d, s in table.items()}
    processor.save_pretrained(base_dir)
    losses: list[float] = []
    mixed = caption_mix(prior, len(align), settings.seed)
    if align:
        items = [encode(processor, r) for r in (*align, *mixed)]
        steps = settings.epochs * math.ceil(len(align) / settings.batch_size)
        if steps:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                losses = train_model(model, processor, items, steps=steps, batch_size=settings.batch_size,
                                     learning_rate=settings.caption_learning_rate, seed=settings.seed,
                                     freeze_vision=True)
        model.save_pretrained(base_dir)
    info = {
        "key": key, "vision": "slots", "settings": asdict(settings), "prior": prior_info,
        "align_records": len(align), "prior_records_mixed": len(mixed), "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(sum(losses[-10:]) / len(losses[-10:])) if losses else None,
        "seconds": round(time.perf_counter() - started + prior_info.get("seconds", 0.0), 1),
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")
    info["cached"] = False
    say(f"bench: slot base: captions on {len(align)} alignment records mixed with {len(mixed)} prior records, "
        f"{len(losses)} steps"
        + (f" (loss {info['loss_first']:.2f} -> {info['loss_last']:.2f})" if losses else ""))
    return info


def _settings_key(settings: BaseSettings) -> dict[str, Any]:
    """The settings in a cache key; `size` only when it is not the default, so older caches stay valid."""
    values = asdict(settings)
    if values["size"] == "tiny":
        del values["size"]
    return values


def caption_mix(prior: Sequence[Record], n_align: int, seed: int) -> list[Record]:
    """The prior records mixed into the slot base's caption phase: `CAPTION_PRIOR_SHARE` of its records, drawn
    from the prior stream without replacement (seeded), at most all of it."""
    import random

    if not prior or not n_align or CAPTION_PRIOR_SHARE <= 0:
        return []
    n = min(len(prior), round(n_align * CAPTION_PRIOR_SHARE / (1 - CAPTION_PRIOR_SHARE)))
    return random.Random(seed).sample(list(prior), n)


def _cached_base(base_dir: Path, key: str, say: Any) -> dict[str, Any] | None:
    """The base model's marker when `base_dir` already holds the base made for `key` (said), else None."""
    marker = base_dir / BASE_MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("key") == key:
            say(f"bench: base model already built ({base_dir})")
            return {**old, "cached": True}
    return None


def build_base(base_dir: Path, train: Sequence[Record], align: Sequence[Record], settings: BaseSettings,
               say: Any = print, vision: Sequence[Record] | None = None,
               vision_source: str = "alignment records") -> dict[str, Any]:
    """Build and pre-train the base model into `base_dir` (skipped when the same base is already there).

    The tokenizer is learned from the texts of `train` and `align`; the bag-of-words phase runs on `vision`
    (default: `align`; records with one image take part), the caption phase on `align`. The cache key holds
    the settings, the texts and every pre-training image's bytes (by SHA-256).
    """
    import torch

    from tive.bench.keys import record_content
    from tive.io import sha256_json
    from tive.model.loading import load_base
    from tive.model.tiny import build_tiny_model

    vision = list(align) if vision is None else list(vision)
    marker = base_dir / BASE_MARKER
    key = sha256_json({
        "training_loop": TRAINING_LOOP,
        "settings": _settings_key(settings),
        "train": [[t.text() for t in r.turns] for r in train],
        "align": [record_content(r) for r in align],
        "vision": [record_content(r) for r in vision],
    })
    if (cached := _cached_base(base_dir, key, say)) is not None:
        return cached
    started = time.perf_counter()
    texts = [turn.text() for record in (*train, *align) for turn in record.turns]
    build_tiny_model(base_dir, texts, seed=settings.seed, vocab_size=settings.vocab_size)
    model, processor = load_base(base_dir)
    losses: list[float] = []
    vision_losses: list[float] = []
    if vision or align:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            if vision:
                vision_items = [encode(processor, r) for r in vision]
                vision_losses = pretrain_vision(model, processor, vision, vision_items, steps=settings.vision_steps,
                                                batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                                seed=settings.seed)
            if align:
                items = [encode(processor, r) for r in align]
                steps = settings.epochs * math.ceil(len(items) / settings.batch_size)
                if steps:
                    losses = train_model(model, processor, items, steps=steps, batch_size=settings.batch_size,
                                         learning_rate=settings.learning_rate, seed=settings.seed,
                                         freeze_vision=True)
        model.save_pretrained(base_dir)
    info = {
        "key": key,
        "settings": asdict(settings),
        "align_records": len(align),
        "vision_records": len(vision),
        "vision_source": vision_source,
        "vision_steps": len(vision_losses),
        "vision_loss_first": vision_losses[0] if vision_losses else None,
        "vision_loss_last": float(sum(vision_losses[-10:]) / len(vision_losses[-10:])) if vision_losses else None,
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(sum(losses[-10:]) / len(losses[-10:])) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")  # last: the base's completion marker
    info["cached"] = False
    say(
        f"bench: base model pre-trained: vision tower on {len(vision)} {vision_source}, {len(vision_losses)} "
        "bag-of-words steps"
        + (f" (loss {info['vision_loss_first']:.2f} -> {info['vision_loss_last']:.2f})" if vision_losses else "")
        + f"; captions on {len(align)} alignment records, {len(losses)} steps"
        + (f" (loss {info['loss_first']:.2f} -> {info['loss_last']:.2f})" if losses else "")
        + f" ({info['seconds']:.0f} s)"
    )
    return info


def bag_of_words_data(processor: Any, records: Sequence[Record], items: Sequence[dict[str, Any]]) -> Any:
    """(pixel values, targets) of the bag-of-words phase, or None when no record has exactly one image.

    Targets: one row per image, 1 for each token of the record's answers that tells images apart; a word in more
    than half of the captions ("a", "the", "background") is predictable without looking and would drown the
    signal of the content words, so it is no target.
    """
    import torch

    tokenizer = processor.tokenizer
    vocab = len(tokenizer)
    pixels, token_sets = [], []
    for record, item in zip(records, items):
        if len(record.images) != 1 or "pixel_values" not in item:
            continue
        words = " ".join(t.text() for t in record.turns if t.role == "assistant")
        pixels.append(item["pixel_values"])
        token_sets.append(set(tokenizer(words, add_special_tokens=False)["input_ids"]))
    if not pixels:
        return None
    frequency = torch.zeros(vocab)
    for tokens in token_sets:
        frequency[list(tokens)] += 1
    content = frequency <= 0.5 * len(token_sets)
    targets = []
    for tokens in token_sets:
        target = torch.zeros(vocab)
        target[list(tokens)] = 1.0
        targets.append(target * content)
    return torch.cat(pixels), torch.stack(targets)


def pretrain_vision(model: Any, processor: Any, records: Sequence[Record], items: Sequence[dict[str, Any]], *,
                    steps: int, batch_size: int, learning_rate: float, seed: int) -> list[float]:
    """Train the vision tower + projector to predict the bag of words of each record's answers from its image.

    A linear head on the max over the projected image tokens gives one logit per vocabulary entry; the target is
    the set of tokens in the record's answers (cross-entropy against the words as a distribution). Only records
    with exactly one image take part. The head is thrown away afterwards.
    """
    import torch

    data = bag_of_words_data(processor, records, items)
    if data is None or steps < 1:
        return []
    pixel_values, target_matrix = data
    vocab = target_matrix.shape[1]
    inner = model.model
    hidden = model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    # nn.Linear's default (Kaiming-uniform) init: a head initialised near zero passes almost no gradient to the
    # features and the vision tower stays on the word-prior plateau. Seeded: the caller forks and seeds the RNG.
    head = torch.nn.Linear(hidden, vocab)
    params = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(0, len(pixel_values), (min(batch_size, len(pixel_values)),), generator=generator)
        features = inner.get_image_features(pixel_values=pixel_values[index]).pooler_output
        pooled = torch.stack(list(features)).amax(dim=1)
        target = target_matrix[index]
        # Cross-entropy against the caption's words as a distribution: a strong signal for the few content words
        # (binary cross-entropy over the whole vocabulary is dominated by the thousands of absent words).
        loss = -(target * head(pooled).log_softmax(-1)).sum(-1).div(target.sum(-1).clamp(min=1)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


_ENCODERS: dict[int, tuple[Any, Any]] = {}


def _encoder(processor: Any) -> Any:
    """The pipeline's `Encoder` for this processor, made once (it learns the template's BOS / end-of-turn rules)."""
    from tive.model.encode import Encoder

    held = _ENCODERS.get(id(processor))
    if held is None or held[0] is not processor:
        held = _ENCODERS[id(processor)] = (processor, Encoder(processor))
    return held[1]


def encode(processor: Any, record: Record) -> dict[str, Any]:
    """A training item, encoded exactly as the pipeline's stages encode it: input ids, attention mask, labels on
    the answers (and their end-of-turn marker) only, image tensors."""
    return _encoder(processor).encode(record).inputs


def encode_prompt(processor: Any, record: Record) -> dict[str, Any]:
    """An evaluation prompt: every turn but the last (the reference), then the assistant's generation prompt,
    with the same special tokens as the training items (one BOS; nothing after the prompt)."""
    from tive.model.encode import load_images, record_messages

    plan = _encoder(processor).plan
    messages = record_messages(record)[:-1]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = load_images(record)
    encoded = processor(text=[text], images=images or None, add_special_tokens=plan.add_special_tokens,
                        return_tensors="pt")
    out = {key: value[0] if key in ("input_ids", "attention_mask") else value for key, value in encoded.items()}
    if plan.add_special_tokens and plan.suffix_length:  # a tokenizer that appends EOS: a prompt does not end
        for key in ("input_ids", "attention_mask"):
            out[key] = out[key][: -plan.suffix_length]
    return out


def _pad_id(processor: Any) -> int:
    pad = processor.tokenizer.pad_token_id
    return pad if pad is not None else (processor.tokenizer.eos_token_id or 0)


def train_model(model: Any, processor: Any, items: Sequence[dict[str, Any]], *, steps: int, batch_size: int,
                learning_rate: float, seed: int, freeze_vision: bool, weight_decay: float = 0.0,
                micro_batch_size: int = MICRO_BATCH, after_step: Callable[[int], None] | None = None) -> list[float]:
    """Train `model` on pre-encoded items for `steps` optimiser steps; returns the loss of each step.

    `after_step(step)`, when given, is called after each optimiser step (1-based), e.g. to score the model along
    the way (`benchmarks/bench_prior_curve.py`); the model is left in training mode after it returns.

    Each step's batch is a random sample of the records (`_random_batches`, in the order of `torch.Generator(seed)`,
    cycling through fresh passes as needed). Its records are sorted by length and run through the model in
    micro-batches of `micro_batch_size`, so a short record is not padded to the longest of the whole batch; the
    gradient is the same as one pass over the batch (each record's mean answer loss, averaged over the batch).
    """
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tive.model.encode import answer_loss_per_record, collate

    if not items:
        raise TiveError("cannot train on an empty subset")
    for name, param in model.named_parameters():
        param.requires_grad_(not (freeze_vision and name.startswith(_vision_prefix(model))))
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = max(1, steps)
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * total), total)
    generator = torch.Generator().manual_seed(seed)
    pad_id = _pad_id(processor)
    model.train()
    losses: list[float] = []
    batches: list[list[int]] = []
    while len(losses) < total:
        if not batches:
            batches = _random_batches(len(items), batch_size, generator)[::-1]
        chosen = sorted(batches.pop(), key=lambda i: len(items[i]["input_ids"]))
        step_loss = 0.0
        for start in range(0, len(chosen), micro_batch_size):
            micro = collate([items[i] for i in chosen[start : start + micro_batch_size]], pad_id)
            labels = micro.pop("labels")
            loss = answer_loss_per_record(model(**micro).logits, labels).sum() / len(chosen)
            loss.backward()
            step_loss += float(loss.detach())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if after_step is not None:
            after_step(len(losses))
            model.train()
    model.eval()
    return losses


def _random_batches(n: int, batch_size: int, generator: Any) -> list[list[int]]:
    """One epoch of batches: a random permutation of the `n` records cut into consecutive batches.

    Every optimiser step is a random sample of the records. Batches must not be grouped by length: a record's
    length depends on its answer ("yes" is two tokens of this tokenizer, "no" one), so length-sorted batches
    hold one answer each, and the step-to-step swing between all-"yes" and all-"no" batches drowns the signal
    that tells them apart. Measured on text-only questions ("Is there a circle in the image?" about a one-shape
    scene written in words; a text-only study of the tiny model, since retired, 20,000 records): after 1,000
    steps of length-sorted batches every answer was "no" (52% right); with random batches 100%.
    """
    import torch

    order = torch.randperm(n, generator=generator).tolist()
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


def _vision_prefix(model: Any) -> str:
    for name, _ in model.named_parameters():
        if "vision_tower" in name:
            return name[: name.index("vision_tower") + len("vision_tower")]
    return "\0"


def generate(model: Any, processor: Any, prompts: Sequence[dict[str, Any]], batch_size: int = 64,
             max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers to encoded prompts (left-padded batches, KV cache), cut at the end-of-turn token."""
    import torch

    tokenizer = processor.tokenizer
    end_ids = [i for i in (tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id)
               if i is not None and i != tokenizer.unk_token_id]
    pad_id = _pad_id(processor)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]["input_ids"]))
    answers: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            items = [prompts[i] for i in chunk]
            length = max(len(item["input_ids"]) for item in items)
            ids = torch.full((len(items), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(items), length), dtype=torch.long)
            for row, item in enumerate(items):
                n = len(item["input_ids"])
                ids[row, length - n :] = item["input_ids"]
                mask[row, length - n :] = 1
            extra = {}
            image_keys = dict.fromkeys(k for item in items for k in item if k not in ("input_ids", "attention_mask"))
            for key in image_keys:
                extra[key] = torch.cat([item[key] for item in items if key in item])
            out = model.generate(
                input_ids=ids, attention_mask=mask, **extra, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=end_ids, pad_token_id=pad_id,
            )
            for row, index in enumerate(chunk):
                new = out[row, length:].tolist()
                cut = next((k for k, t in enumerate(new) if t in end_ids), len(new))
                answers[index] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    return answers


def fresh_copy(base: Any) -> Any:
    """A trainable copy of the base model (the base itself is never changed)."""
    return copy.deepcopy(base)


def answer_ids(processor: Any, text: str) -> list[int]:
    """The tokens of `text` as an assistant answer: its tokens as the chat template places them (the answer starts
    a segment after the role tag), then the end-of-turn token, which also tells "4" from a longer "47"."""
    tokenizer = processor.tokenizer
    ids = list(tokenizer(text.strip(), add_special_tokens=False)["input_ids"])
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    if end is not None and end != tokenizer.unk_token_id:
        ids.append(int(end))
    return ids


def answer_logliks(model: Any, processor: Any, prompts: Sequence[dict[str, Any]],
                   pairs: Sequence[tuple[int, Sequence[int]]], batch_size: int = 64) -> list[float]:
    """Summed log-likelihood of each (prompt index, answer tokens) pair: the answer teacher-forced after its
    prompt (the prompt ends with the assistant's generation tag, as for greedy answers)."""
    import torch

    pad_id = _pad_id(processor)
    out = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda k: len(prompts[pairs[k][0]]["input_ids"]) + len(pairs[k][1]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = []
            for k in chunk:
                prompt = prompts[pairs[k][0]]["input_ids"]
                answer = torch.as_tensor(list(pairs[k][1]), dtype=prompt.dtype)
                rows.append((prompt, answer))
            length = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for row, (prompt, answer) in enumerate(rows):
                n = len(prompt) + len(answer)
                ids[row, :n] = torch.cat([prompt, answer])
                mask[row, :n] = 1
            extra = {}
            items = [prompts[pairs[k][0]] for k in chunk]
            for key in dict.fromkeys(key for item in items for key in item if key not in ("input_ids",
                                                                                          "attention_mask")):
                extra[key] = torch.cat([item[key] for item in items if key in item])
            logp = model(input_ids=ids, attention_mask=mask, **extra).logits.float().log_softmax(-1)
            for row, (prompt, answer) in enumerate(rows):
                positions = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
                out[chunk[row]] = float(logp[row, positions, answer].sum())
    return out
