"""Turning a record into model inputs with labels on the answer tokens only.

The conversation is rendered with the processor's own chat template. Answer spans are found by rendering
prefixes: the text up to assistant turn i with the generation prompt (P_i) and the text including turn i
(F_i); the characters between them are that answer, with the template's end-of-turn marker (so the model learns
to stop) and without the whitespace the template puts after it. The full text is tokenized with character
offsets, and a token is an answer token when it ends inside an answer span (a token that starts in the
generation prompt but carries the answer's first characters counts; one that runs past the span, into the next
turn, does not). Working in characters rather than counting the tokens of each prefix keeps the labels right for
tokenizers that merge across a turn boundary (LLaVA-1.5's template ends an answer with a space that the next
turn's first word absorbs).

The processor then expands image placeholders into image tokens (a fixed number per image for LLaVA-1.5, a
number that depends on the image's size for LLaVA-NeXT, Qwen2-VL and Idefics3), which shifts an answer by the
number of tokens its preceding images added: the whole expansion when every image comes before it, none when
none does, and otherwise the expansion measured on the prefix with its own images. Every step is checked, and a
template or processor that breaks an assumption gives an error naming the record rather than a wrong mask.

`--max-length` truncation (`truncate_encoded`) cuts the end of a record, never an image's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tive.data.records import Record
from tive.errors import TiveError

IGNORE_INDEX = -100

# Per-token processor outputs (padded along the sequence); everything else is per image (concatenated).
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")


def record_messages(record: Record) -> list[dict[str, Any]]:
    """The record's turns as chat-template messages."""
    return [{"role": turn.role, "content": turn.content} for turn in record.turns]


def load_images(record: Record) -> list[Any]:
    """The record's images as RGB PIL images (files or embedded bytes)."""
    from tive.data.images import open_images

    return open_images(record)


def answer_char_spans(processor: Any, record: Record) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and its answer spans `(start, end, images before)` in characters.

    Raises TiveError naming the record when the chat template does not render the conversation prefix by prefix.
    """
    messages = record_messages(record)

    def render(msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full_text = render(messages, False)
    spans: list[tuple[int, int, int]] = []
    images_seen = 0
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix, upto = render(messages[:i], True), render(messages[: i + 1], False)
            if not (upto.startswith(prefix) and full_text.startswith(upto)):
                raise TiveError(
                    _where(record) + "the chat template does not render this conversation prefix by prefix"
                )
            spans.append((len(prefix), len(upto.rstrip()), images_seen))
        images_seen += sum(part.get("type") == "image" for part in message["content"])
    return full_text, spans


def _plain_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text` and each token's character span (None when the tokenizer gives no offsets)."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return tokenizer(text, add_special_tokens=False)["input_ids"], None
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def _answer_token_ranges(
    tokenizer: Any, full_text: str, spans: list[tuple[int, int, int]]
) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Plain (unexpanded) token ids of the full text and, per answer, `(first, stop, char start, images before)`."""
    ids, offsets = _plain_tokens(tokenizer, full_text)
    ranges = []
    for start, end, n_images in spans:
        if offsets is not None:
            inside = [j for j, (a, b) in enumerate(offsets) if a < b and start < b <= end]
            first, stop = (inside[0], inside[-1] + 1) if inside else (0, 0)
        else:  # a slow tokenizer: count the tokens of the prefixes (exact for prefix-consistent tokenizers)
            first = len(tokenizer(full_text[:start], add_special_tokens=False)["input_ids"])
            stop = len(tokenizer(full_text[:end], add_special_tokens=False)["input_ids"])
        ranges.append((first, stop, start, n_images))
    return ids, ranges


def encode_record(processor: Any, record: Record) -> dict[str, Any]:
    """Model inputs for one record: `input_ids`, `attention_mask`, `labels` (1-D) plus image tensors.

    Labels are -100 except on answer tokens. Raises TiveError naming the record when the chat template does not
    render conversations prefix-consistently or the record has no answer token.
    """
    tokenizer = processor.tokenizer
    full_text, spans = answer_char_spans(processor, record)
    plain_ids, ranges = _answer_token_ranges(tokenizer, full_text, spans)
    images = load_images(record)
    encoded = processor(text=[full_text], images=images or None, add_special_tokens=False, return_tensors="pt")
    input_ids = encoded["input_ids"][0]
    total_shift = len(input_ids) - len(plain_ids)
    labels = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
    for first, stop, char_start, n_images in ranges:
        if n_images == len(images):
            shift = total_shift
        elif n_images == 0:
            shift = 0
        else:  # some images come later: measure what this answer's preceding images add
            prefix = full_text[:char_start]
            expanded = processor(text=[prefix], images=images[:n_images], add_special_tokens=False)["input_ids"][0]
            shift = len(expanded) - len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        if input_ids[first + shift : stop + shift].tolist() != plain_ids[first:stop]:
            raise TiveError(_where(record) + "answer tokens are not where the chat template puts them")
        labels[first + shift : stop + shift] = input_ids[first + shift : stop + shift]
    if not (labels != IGNORE_INDEX).any():
        raise TiveError(_where(record) + "no answer token to learn from")
    out = {}
    for key, value in encoded.items():
        if key in _SEQUENCE_KEYS or (getattr(value, "ndim", 0) == 2 and value.shape == encoded["input_ids"].shape):
            out[key] = value[0]
        else:
            out[key] = value
    out["labels"] = labels
    return out


def image_token_ids(processor: Any) -> set[int]:
    """The ids of the tokens that stand for image features (what truncation must never cut)."""
    ids = set()
    for name in ("image_token_id", "video_token_id"):
        value = getattr(processor, name, None)
        if isinstance(value, int):
            ids.add(value)
    token = getattr(processor, "image_token", None)
    if isinstance(token, str):
        value = processor.tokenizer.convert_tokens_to_ids(token)
        if isinstance(value, int) and value != processor.tokenizer.unk_token_id:
            ids.add(value)
    return ids


def truncate_encoded(encoded: dict[str, Any], max_length: int, image_ids: set[int], record: Record) -> dict[str, Any]:
    """`encoded` cut to its first `max_length` tokens (unchanged when it fits).

    Only the end of the conversation is cut, never an image's tokens: a record whose image tokens reach past
    `max_length` raises TiveError (its image features would no longer match its image tokens). The labels of the
    answer tokens that remain are kept; there may be none left (see `EncodedRecords.no_answer`).
    """
    import torch

    length = len(encoded["input_ids"])
    if length <= max_length:
        return encoded
    if image_ids:
        is_image = torch.isin(encoded["input_ids"], torch.tensor(sorted(image_ids)))
        last = int(is_image.nonzero().max()) if is_image.any() else -1
        if last >= max_length:
            raise TiveError(
                f"record {record.index} (id {record.record_id!r}), field 'image': its image tokens run to position "
                f"{last + 1} of {length}, past --max-length {max_length}; images are never cut: raise --max-length "
                "or leave the record out"
            )
    return {
        key: value[:max_length] if _is_sequence(key, value, length) else value for key, value in encoded.items()
    }


@dataclass
class EncodedRecords:
    """Records encoded for the model, with what `--max-length` did to them.

    Attributes:
        items: one encoded record (see `encode_record`) per input record, in order.
        truncated: positions (into the input) of the records that were cut to the maximum length.
        no_answer: positions of the records whose answer tokens were all cut: they have no loss (their gradient is
            zero and the warm-up leaves them out).
    """

    items: list[dict[str, Any]]
    truncated: list[int] = field(default_factory=list)
    no_answer: list[int] = field(default_factory=list)


def encode_records(processor: Any, records: Sequence[Record], max_length: int | None = None) -> EncodedRecords:
    """`encode_record` for every record, truncated to `max_length` tokens when given (see `truncate_encoded`)."""
    image_ids = image_token_ids(processor) if max_length else set()
    result = EncodedRecords(items=[])
    for position, record in enumerate(records):
        encoded = encode_record(processor, record)
        if max_length and len(encoded["input_ids"]) > max_length:
            encoded = truncate_encoded(encoded, max_length, image_ids, record)
            result.truncated.append(position)
            if not (encoded["labels"] != IGNORE_INDEX).any():
                result.no_answer.append(position)
        result.items.append(encoded)
    return result


def describe_truncation(
    stage: str, n_records: int, n_truncated: int, no_answer: Sequence[Record], max_length: int
) -> str:
    """One line for the user: how many records `--max-length` cut, and which lost every answer token."""
    line = f"{stage}: --max-length {max_length}: {n_truncated} of {n_records} records truncated"
    if no_answer:
        named = ", ".join(f"{r.index} (id {r.record_id!r})" for r in no_answer[:5])
        line += f"; {len(no_answer)} lost every answer token and have no loss: {named}"
        line += ", ..." if len(no_answer) > 5 else ""
    return line


def _is_sequence(key: str, value: Any, length: int) -> bool:
    return key in _SEQUENCE_KEYS or (getattr(value, "ndim", 0) == 1 and len(value) == length)


def collate(items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Pad encoded records into a batch (right padding).

    Per-token tensors are padded along the sequence (input ids with `pad_token_id`, labels with -100, the rest
    with 0). Per-image tensors are concatenated in record order; where their shapes differ beyond the first
    dimension (LLaVA-NeXT's number of tiles, Idefics3's number of images and their sizes) they are zero-padded
    first, as the processors themselves pad a batch.
    """
    import torch
    import torch.nn.functional as F

    length = max(len(item["input_ids"]) for item in items)
    batch: dict[str, Any] = {}
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    sequence_keys = [
        key for key in dict.fromkeys(k for item in items for k in item)
        if all(_is_sequence(key, item[key], len(item["input_ids"])) for item in items if key in item)
    ]
    for key in sequence_keys:
        if not all(key in item for item in items):
            raise ValueError(f"collate: {key!r} is missing from some records")
        rows = []
        for item in items:
            seq = item[key]
            rows.append(torch.cat([seq, seq.new_full((length - len(seq),), fill.get(key, 0))]))
        batch[key] = torch.stack(rows)
    image_keys = dict.fromkeys(key for item in items for key in item if key not in sequence_keys)
    for key in image_keys:
        parts = [item[key] for item in items if key in item]
        shape = [max(part.shape[d] for part in parts) for d in range(parts[0].ndim)]
        padded = []
        for part in parts:
            pad: list[int] = []
            for d in reversed(range(1, part.ndim)):
                pad += [0, shape[d] - part.shape[d]]
            padded.append(F.pad(part, pad) if any(pad) else part)
        batch[key] = torch.cat(padded)
    return batch


def answer_loss_per_record(logits: Any, labels: Any) -> Any:
    """Mean token cross-entropy over each record's answer tokens (the method's per-record loss), shape (batch,).

    A record without answer tokens (all cut by `--max-length`) has loss 0 and no gradient.
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != IGNORE_INDEX
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _where(record: Record) -> str:
    return f"record {record.index} (id {record.record_id!r}), field 'conversations': "
