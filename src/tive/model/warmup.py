"""The warm-up: a LoRA fine-tune of the base model on a small task-balanced sample (the reference model)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tive.model.encode import answer_loss_per_record, collate
from tive.select import split_budget

log = logging.getLogger("tive")


def warmup_sample(tasks: Sequence[str], fraction: float, seed: int) -> list[int]:
    """Positions (into `tasks`) of the warm-up set: `fraction` of the records, split equally across tasks.

    A task smaller than its equal share gives all its records and the rest is spread over the other tasks.
    """
    names = sorted(set(tasks))
    sizes = {name: 0 for name in names}
    for task in tasks:
        sizes[task] += 1
    total = max(1, min(len(tasks), round(fraction * len(tasks))))
    per_task = split_budget({name: 1.0 for name in names}, sizes, total)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    positions = np.arange(len(tasks))
    task_array = np.asarray(tasks, dtype=object)
    for name in names:
        members = positions[task_array == name]
        chosen.extend(rng.choice(members, size=per_task[name], replace=False).tolist())
    return sorted(chosen)


def train_warmup(
    model: Any,
    processor: Any,
    items: Sequence[dict[str, Any]],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: str,
    log_path: Path,
) -> list[float]:
    """Train the trainable parameters of `model` on encoded records (`encode_records`); returns each step's loss.

    AdamW, cosine schedule with 3% linear warm-up steps (the authors' recipe). Each step's loss is the mean over
    its records of the per-record mean answer-token loss. The loss per step is appended to `log_path` (JSONL).
    """
    import torch
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    encoded = list(items)
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id or 0
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total_steps = steps_per_epoch * epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * total_steps), total_steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file, tqdm(
        total=total_steps, desc="warm-up", unit="step", disable=None
    ) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            for step_in_epoch in range(steps_per_epoch):
                batch_items = [encoded[i] for i in order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size]]
                batch = {k: v.to(device) for k, v in collate(batch_items, pad_id).items()}
                labels = batch.pop("labels")
                outputs = model(**batch)
                loss = answer_loss_per_record(outputs.logits, labels).mean()
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                losses.append(value)
                step = len(losses)
                log_file.write(
                    json.dumps({"step": step, "epoch": epoch, "loss": value, "lr": scheduler.get_last_lr()[0]}) + "\n"
                )
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    log.info("warm-up: %d steps in %.1f s, loss %.4f -> %.4f", len(losses), time.perf_counter() - started,
             losses[0], losses[-1])
    return losses
