"""Records become model inputs whose labels cover exactly the answer tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tive.data.formats import parse_llava_record
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


def test_labels_are_found_by_characters_when_a_turn_boundary_merges_tokens(processor, image):
    """A template whose answer ends in whitespace that the next turn's first token absorbs (LLaVA-1.5's)."""
    template = (
        "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
        "{% else %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    )
    original = processor.chat_template
    processor.chat_template = template
    try:
        record = make_record(
            [
                {"from": "human", "value": "<image>\nWhat color?"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "How many circles are there?"},
                {"from": "gpt", "value": "3"},
            ],
            image,
        )
        encoded = encode_record(processor, record)
    finally:
        processor.chat_template = original
    # The template closes no answer, so the tokenizer's EOS follows each one (LLaVA-1.5's training format).
    assert [run.strip() for run in labelled_text(processor, encoded)] == ["red</s>", "3</s>"]


def test_truncation_cuts_the_end_and_never_cuts_images(processor, image):
    from tive.model.encode import Encoder, RecordError, image_token_ids, truncate_encoded

    short = make_record([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "3"}])
    late_answer = make_record(
        [{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}], image
    )
    full = [encode_record(processor, r) for r in (short, late_answer)]
    image_ids = image_token_ids(processor)
    assert image_ids == {processor.tokenizer.convert_tokens_to_ids("<image>")}
    last_image = int((full[1]["input_ids"] == min(image_ids)).nonzero().max())
    max_length = last_image + 2  # the images fit, the answer does not
    assert len(full[0]["input_ids"]) <= max_length < int((full[1]["labels"] != IGNORE_INDEX).nonzero().min())
    encoder = Encoder(processor, max_length)
    kept = encoder.encode(short)
    assert not kept.truncated and kept.inputs["input_ids"].tolist() == full[0]["input_ids"].tolist()
    # Cut to where no answer token is left: the record cannot be learnt from at this length, said per record.
    with pytest.raises(RecordError, match="no answer token within --max-length") as caught:
        encoder.encode(late_answer)
    assert caught.value.index == late_answer.index and caught.value.field == "conversations"
    cut = truncate_encoded(full[1], max_length, image_ids, late_answer)
    assert all(len(cut[key]) == max_length for key in ("input_ids", "attention_mask", "labels"))
    assert torch.equal(cut["pixel_values"], full[1]["pixel_values"])
    answer_start = int((full[1]["labels"] != IGNORE_INDEX).nonzero().min())
    partly = Encoder(processor, answer_start + 1).encode(late_answer)
    assert partly.truncated and int((partly.inputs["labels"] != IGNORE_INDEX).sum()) == 1
    with pytest.raises(RecordError, match="image tokens run to position .* past --max-length") as caught:
        truncate_encoded(full[1], last_image, image_ids, late_answer)
    assert caught.value.field == "image"


def test_collate_zero_pads_per_image_tensors_of_different_shapes():
    """LLaVA-NeXT tiles and Idefics3 image counts differ between records: padded with zeros, as processors do."""
    a = {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.ones(3, dtype=torch.long),
         "labels": torch.tensor([-100, 2, 3]), "mm_token_type_ids": torch.tensor([0, 1, 0]),
         "pixel_values": torch.ones(1, 2, 3, 4, 4), "image_sizes": torch.tensor([[4, 4]])}
    b = {"input_ids": torch.tensor([5, 6]), "attention_mask": torch.ones(2, dtype=torch.long),
         "labels": torch.tensor([-100, 6]), "mm_token_type_ids": torch.tensor([1, 0]),
         "pixel_values": torch.full((2, 3, 3, 4, 4), 2.0), "image_sizes": torch.tensor([[4, 8], [8, 4]])}
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 6, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 6, -100]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 0], [1, 0, 0]]
    assert batch["pixel_values"].shape == (3, 3, 3, 4, 4)
    assert batch["pixel_values"][0, 2].abs().sum() == 0 and (batch["pixel_values"][1:] == 2).all()
    assert batch["image_sizes"].tolist() == [[4, 4], [4, 8], [8, 4]]
