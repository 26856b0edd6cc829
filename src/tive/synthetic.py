"""What the two synthetic-data generators share: the demo dataset (`tive.demo_data`) and the bench's world
(`tive.bench.world`).

One `Example` (a record before it is written), one seeded generator per name, the font numbers are drawn with,
the proportional split of a record count over tasks (`tive.select`'s exact largest-remainder rounding), and the
writer that turns examples into LLaVA-format records with their images (each image written once, atomically).
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFont

from tive.io import atomic_path

IMAGE_TOKEN = "<image>"


@dataclass
class Example:
    """One generated record before it is written.

    Attributes:
        turns: (question, answer) pairs; the image placeholder is added to the first question by the writer.
        image: the drawing, or None for a text-only record.
        image_key: the image's file name (without extension) inside its folder; examples with the same key share
            one file (the generator hands them the same image).
        truth: the ground truth the answers were made from, for tests and debugging.
        metric: for a benchmark record, how its answer is scored (exact, option, iou); None for training records.
    """

    turns: list[tuple[str, str]]
    image: Image.Image | None = None
    image_key: str | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None


def named_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one task, benchmark or purpose: depends on the seed and the name only, so adding a task
    leaves the others' records unchanged."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at `size` (its small bitmap font where Pillow lacks FreeType or is older than 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def split_by_weight(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split `total` records over names in proportion to `weights`, exactly (largest remainder, ties by name)."""
    from tive.select import largest_remainder

    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    exact = {name: Fraction(w) for name, w in weights.items()}
    weight_sum = sum(exact.values())
    counts = largest_remainder({name: Fraction(total) * w / weight_sum for name, w in exact.items()}, total)
    return {name: counts[name] for name in weights}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file (parent folders created)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_records_json(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_bytes(path, (json.dumps(list(records), indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def to_records(examples: Sequence[Example], folder: str, image_root: Path, *, task: str | None = None,
               placement: np.random.Generator | None = None, image_before: float = 1.0) -> list[dict[str, Any]]:
    """LLaVA-format records of `examples`, their images written under `image_root/folder/<key>.png` (once each).

    Ids are `<folder with / as ->-<number>`; `task` goes into each record's `dataset` field; `metric` is kept.
    The `<image>` placeholder opens the first question with probability `image_before` (drawn from `placement`;
    always without one) and closes it otherwise, as real mixes put it on either side.
    """
    records = []
    written: set[str] = set()
    for number, example in enumerate(examples):
        record: dict[str, Any] = {"id": f"{folder.replace('/', '-')}-{number}"}
        if task is not None:
            record["dataset"] = task
        first = example.turns[0][0]
        if example.image is not None:
            key = example.image_key if example.image_key is not None else f"{number:05d}"
            relative = f"{folder}/{key}.png"
            if relative not in written:
                write_bytes(image_root / relative, png_bytes(example.image))
                written.add(relative)
            record["image"] = relative
            after = placement is not None and placement.random() >= image_before
            first = f"{first}\n{IMAGE_TOKEN}" if after else f"{IMAGE_TOKEN}\n{first}"
        conversations = []
        for k, (question, answer) in enumerate(example.turns):
            conversations.append({"from": "human", "value": first if k == 0 else question})
            conversations.append({"from": "gpt", "value": answer})
        record["conversations"] = conversations
        if example.metric is not None:
            record["metric"] = example.metric
        records.append(record)
    return records
