"""The bench's model side: the pre-trained tiny base, fine-tuning on a subset, greedy evaluation.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tive.data.records import Record
from tive.errors import TiveError

MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe for every subset: the same number of optimiser steps (equal compute).

    The paper trains every subset with the full data's recipe (same epochs, so a 15% subset costs 15% of the
    compute). The miniature cannot: its base model has to learn the skills, not only the answer formats, so its
    scores follow the number of optimiser steps. Measured on world seed 1: the full data reaches its plateau
    (average ~25) after ~400 steps, while a 15% subset at the same 3 epochs gets 57 steps and scores ~3 whatever
    the method, which measures steps, not data. With equal steps every subset gets the same compute and any
    difference between methods comes from the data alone. `epochs` switches to the paper's equal-epochs recipe.

    Attributes:
        steps: optimiser steps of every run (used when `epochs` is None).
        epochs: passes over the subset instead (the paper's recipe); None for equal steps.
        batch_size: records per optimiser step.
        learning_rate: AdamW peak learning rate (cosine schedule, 3% linear warm-up).
        freeze_vision: keep the vision tower frozen (LLaVA-1.5's stage 2).
    """

    steps: int = 300
    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-3
    freeze_vision: bool = True

    def total_steps(self, n_records: int) -> int:
        if self.epochs is not None:
            return self.epochs * math.ceil(n_records / self.batch_size)
        return self.steps


@dataclass(frozen=True)
class BaseSettings:
    """How the base model is made: tokenizer + random init from `seed`, then pre-training on the alignment set.

    Pre-training has two phases, both on the alignment records only. First the vision tower and projector learn
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
    vision_steps: int = 800
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 2e-3
    vocab_size: int = 2048


BASE_MARKER = "bench_base.json"


def build_base(base_dir: Path, train: Sequence[Record], align: Sequence[Record], settings: BaseSettings,
               say: Any = print) -> dict[str, Any]:
    """Build and pre-train the base model into `base_dir` (skipped when the same base is already there)."""
    import torch

    from tive.io import sha256_json
    from tive.model.loading import load_base
    from tive.model.tiny import build_tiny_model

    marker = base_dir / BASE_MARKER
    key = sha256_json({
        "settings": asdict(settings),
        "train": [[t.text() for t in r.turns] for r in train],
        "align": [[[t.text() for t in r.turns], [str(p) for p in r.image_paths]] for r in align],
    })
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("key") == key:
            say(f"bench: base model already built ({base_dir})")
            return {**old, "cached": True}
    started = time.perf_counter()
    texts = [turn.text() for record in (*train, *align) for turn in record.turns]
    build_tiny_model(base_dir, texts, seed=settings.seed, vocab_size=settings.vocab_size)
    model, processor = load_base(base_dir)
    losses: list[float] = []
    vision_losses: list[float] = []
    if align:
        items = [encode(processor, r) for r in align]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            vision_losses = pretrain_vision(model, processor, align, items, steps=settings.vision_steps,
                                            batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                            seed=settings.seed)
            steps = settings.epochs * math.ceil(len(items) / settings.batch_size)
            losses = train_model(model, processor, items, steps=steps, batch_size=settings.batch_size,
                                 learning_rate=settings.learning_rate, seed=settings.seed, freeze_vision=True)
        model.save_pretrained(base_dir)
    info = {
        "key": key,
        "settings": asdict(settings),
        "align_records": len(align),
        "vision_steps": len(vision_losses),
        "vision_loss_last": float(sum(vision_losses[-10:]) / len(vision_losses[-10:])) if vision_losses else None,
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(sum(losses[-10:]) / len(losses[-10:])) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")  # last: the base's completion marker
    info["cached"] = False
    say(
        f"bench: base model pre-trained on {len(align)} alignment records, {len(losses)} steps"
        + (f", loss {info['loss_first']:.2f} -> {info['loss_last']:.2f}" if losses else "")
        + f" ({info['seconds']:.0f} s)"
    )
    return info


def pretrain_vision(model: Any, processor: Any, records: Sequence[Record], items: Sequence[dict[str, Any]], *,
                    steps: int, batch_size: int, learning_rate: float, seed: int) -> list[float]:
    """Train the vision tower + projector to predict the bag of words of each record's answers from its image.

    A linear head on the mean of the projected image tokens gives one logit per vocabulary entry; the target is
    the set of tokens in the record's answers (cross-entropy against the words as a distribution). Only records
    with exactly one image take part. The head is thrown away afterwards.
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
    if not pixels or steps < 1:
        return []
    # Only words that tell images apart are targets: a word in more than half of the captions ("a", "the",
    # "background") is predictable without looking and would drown the signal of the content words.
    frequency = torch.zeros(vocab)
    for tokens in token_sets:
        frequency[list(tokens)] += 1
    content = frequency <= 0.5 * len(token_sets)
    targets = []
    for tokens in token_sets:
        target = torch.zeros(vocab)
        target[list(tokens)] = 1.0
        targets.append(target * content)
    pixel_values, target_matrix = torch.cat(pixels), torch.stack(targets)
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


def encode(processor: Any, record: Record) -> dict[str, Any]:
    """A training item: input ids, attention mask, labels on the answers only, image tensors."""
    from tive.model.encode import encode_record

    return encode_record(processor, record)


def encode_prompt(processor: Any, record: Record) -> dict[str, Any]:
    """An evaluation prompt: every turn but the last (the reference), then the assistant's generation prompt."""
    from tive.model.encode import load_images, record_messages

    messages = record_messages(record)[:-1]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = load_images(record)
    encoded = processor(text=[text], images=images or None, add_special_tokens=False, return_tensors="pt")
    out = {key: value[0] if key in ("input_ids", "attention_mask") else value for key, value in encoded.items()}
    return out


def _pad_id(processor: Any) -> int:
    pad = processor.tokenizer.pad_token_id
    return pad if pad is not None else (processor.tokenizer.eos_token_id or 0)


def train_model(model: Any, processor: Any, items: Sequence[dict[str, Any]], *, steps: int, batch_size: int,
                learning_rate: float, seed: int, freeze_vision: bool) -> list[float]:
    """Train `model` on pre-encoded items for `steps` optimiser steps; returns the loss of each step.

    The record order of each pass comes from `torch.Generator(seed)` (length-bucketed batches), cycling
    through fresh passes as needed.
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
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * total), total)
    generator = torch.Generator().manual_seed(seed)
    pad_id = _pad_id(processor)
    model.train()
    losses: list[float] = []
    batches: list[list[int]] = []
    lengths = [len(item["input_ids"]) for item in items]
    while len(losses) < total:
        if not batches:
            batches = _length_bucketed_batches(lengths, batch_size, generator)
        batch = collate([items[i] for i in batches.pop()], pad_id)
        labels = batch.pop("labels")
        outputs = model(**batch)
        loss = answer_loss_per_record(outputs.logits, labels).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _length_bucketed_batches(lengths: Sequence[int], batch_size: int, generator: Any) -> list[list[int]]:
    """One epoch of batches: a random permutation cut into windows of 16 batches, each window sorted by length
    (so a batch holds records of similar length and little padding), then the batches shuffled."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = 16 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


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
