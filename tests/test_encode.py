"""Records become model inputs whose labels cover exactly the answer tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tive.data.formats import parse_llava_record
from tive.errors import TiveError
from tive.model.encode import IGNORE_INDEX, collate, encode_record
from tive.model.loading import load_base


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_base(tiny_model_dir)[1]


def make_record(conversations, image: Path | None = None, n_images: int = 1):
    raw = {"id": "r", "conversations": conversations}
    if image is not None:
        raw["image"] = [image.name] * n_images
    record = parse_llava_record(raw, 0, Path("data.json"))
    if image is not None:
        record.image_paths = [image] * n_images
    return record


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    return path


def labelled_text(processor, encoded) -> list[str]:
    """The decoded runs of consecutive labelled tokens."""
    labels = encoded["labels"].tolist()
    runs, current = [], []
    for token, label in zip(encoded["input_ids"].tolist(), labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(processor.tokenizer.decode(current))
            current = []
    if current:
        runs.append(processor.tokenizer.decode(current))
    return runs


def test_single_turn_labels_cover_answer_and_end_token(processor, image):
    record = make_record(
        [{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}], image
    )
    encoded = encode_record(processor, record)
    assert labelled_text(processor, encoded) == ["red<|end|>"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (encoded["input_ids"] == image_id).sum().item() == 16  # 4x4 patches of the tiny vision tower
    assert encoded["pixel_values"].shape == (1, 3, 32, 32)
    assert encoded["input_ids"].shape == encoded["labels"].shape == encoded["attention_mask"].shape


def test_multi_turn_labels_every_answer_and_nothing_else(processor, image):
    record = make_record(
        [
            {"from": "human", "value": "What color is the shape?\n<image>"},
            {"from": "gpt", "value": "It is red."},
            {"from": "human", "value": "How many circles are there?"},
            {"from": "gpt", "value": "3"},
        ],
        image,
    )
    encoded = encode_record(processor, record)
    assert labelled_text(processor, encoded) == ["It is red.<|end|>", "3<|end|>"]


def test_text_only_record_has_no_image_tokens(processor):
    record = make_record([{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "blue green"}])
    encoded = encode_record(processor, record)
    assert "pixel_values" not in encoded
    assert labelled_text(processor, encoded) == ["blue green<|end|>"]


def test_images_in_later_turns_shift_only_the_answers_after_them(processor, image):
    record = make_record(
        [
            {"from": "human", "value": "Describe it."},
            {"from": "gpt", "value": "blue"},
            {"from": "human", "value": "<image>\nWhat color?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "And now?<image>"},
            {"from": "gpt", "value": "green"},
        ],
        image,
        n_images=2,
    )
    encoded = encode_record(processor, record)
    assert labelled_text(processor, encoded) == ["blue<|end|>", "red<|end|>", "green<|end|>"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (encoded["input_ids"] == image_id).sum().item() == 32
    assert encoded["pixel_values"].shape[0] == 2


def test_collate_pads_right_and_masks_padding(processor, image):
    short = encode_record(processor, make_record([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "3"}]))
    long = encode_record(
        processor,
        make_record([{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}], image),
    )
    batch = collate([short, long], pad_token_id=processor.tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert batch["input_ids"].shape == (2, len(long["input_ids"]))
    assert batch["attention_mask"][0, n:].sum() == 0 and batch["attention_mask"][0, :n].all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == 1
