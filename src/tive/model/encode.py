"""Turning a record into model inputs with labels on the answer tokens only.

The conversation is rendered with the processor's own chat template. Answer spans are found by rendering
prefixes: the text up to assistant turn i with the generation prompt (P_i) and the text including turn i
(F_i); the tokens between them are that answer (with the turn's end token, so the model learns to stop). The
processor then expands image placeholders into image tokens, which shifts an answer by the number of tokens its
preceding images added: the whole expansion when every image comes before it, none when none does, and
otherwise the expansion measured on the prefix with its own images. Every step is checked, and a template or
processor that breaks an assumption gives an error naming the record rather than a wrong mask.
"""

from __future__ import annotations

from typing import Any

from tive.data.records import Record
from tive.errors import TiveError

IGNORE_INDEX = -100

# Processor outputs that are per record (padded along the sequence); everything else is per image (concatenated).
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def record_messages(record: Record) -> list[dict[str, Any]]:
    """The record's turns as chat-template messages."""
    return [{"role": turn.role, "content": turn.content} for turn in record.turns]


def load_images(record: Record) -> list[Any]:
    """The record's images as RGB PIL images (files or embedded bytes)."""
    from tive.data.images import open_images

    return open_images(record)


def encode_record(processor: Any, record: Record) -> dict[str, Any]:
    """Model inputs for one record: `input_ids`, `attention_mask`, `labels` (1-D) plus image tensors.

    Labels are -100 except on answer tokens. Raises TiveError naming the record when the chat template does not
    render conversations prefix-consistently or the record has no answer token.
    """
    tokenizer = processor.tokenizer
    messages = record_messages(record)

    def render(msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    full_text = render(messages, False)
    spans: list[tuple[int, int, str, int]] = []  # (start, end) in unexpanded tokens, prefix text, images before
    images_seen = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            images_seen += sum(part.get("type") == "image" for part in message["content"])
            continue
        prefix, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (upto.startswith(prefix) and full_text.startswith(upto)):
            raise TiveError(_where(record) + "the chat template does not render this conversation prefix by prefix")
        spans.append((n_tokens(prefix), n_tokens(upto), prefix, images_seen))

    images = load_images(record)
    encoded = processor(text=[full_text], images=images or None, add_special_tokens=False, return_tensors="pt")
    input_ids = encoded["input_ids"][0]
    plain_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    total_shift = len(input_ids) - len(plain_ids)
    labels = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
    for start, end, prefix, n_images in spans:
        if n_images == len(images):
            shift = total_shift
        elif n_images == 0:
            shift = 0
        else:  # some images come later: measure what this prefix's own images add
            expanded = processor(text=[prefix], images=images[:n_images], add_special_tokens=False)["input_ids"][0]
            shift = len(expanded) - start
        if input_ids[start + shift : end + shift].tolist() != plain_ids[start:end]:
            raise TiveError(_where(record) + "answer tokens are not where the chat template puts them")
        labels[start + shift : end + shift] = input_ids[start + shift : end + shift]
    if not (labels != IGNORE_INDEX).any():
        raise TiveError(_where(record) + "no answer token to learn from")
    out = {key: value[0] if key in _SEQUENCE_KEYS else value for key, value in encoded.items()}
    out["labels"] = labels
    return out


def collate(items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Pad encoded records into a batch (right padding); image tensors are concatenated in record order."""
    import torch

    length = max(len(item["input_ids"]) for item in items)
    batch: dict[str, Any] = {}
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    for key, value in fill.items():
        rows = []
        for item in items:
            seq = item[key]
            rows.append(torch.cat([seq, seq.new_full((length - len(seq),), value)]))
        batch[key] = torch.stack(rows)
    image_keys = dict.fromkeys(key for item in items for key in item if key not in fill)
    for key in image_keys:
        batch[key] = torch.cat([item[key] for item in items if key in item])
    return batch


def answer_loss_per_record(logits: Any, labels: Any) -> Any:
    """Mean token cross-entropy over each record's answer tokens (the method's per-record loss), shape (batch,)."""
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
