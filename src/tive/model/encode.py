"""Turning a record into model inputs with labels on the answer tokens only, exactly as the model was trained.

**What the model sees.** The conversation is rendered with the processor's own chat template and tokenized by the
processor with the tokenizer's special tokens, as `processor(text=processor.apply_chat_template(msgs), images=...)`
does in every Hugging Face usage example and as the models were trained: a Llama-style tokenizer puts its BOS
(`<s>`) first. Exactly one BOS: when the template already renders it (Idefics3's `<|begin_of_text|>`, the built-in
model's `{{ bos_token }}`), the tokenizer's is not added again.

**End of turn.** Each answer is labelled together with the template's end-of-turn marker (`</s>`, `<|im_end|>`,
`<end_of_utterance>`, ...), so the model learns to stop. Where the template closes an answer with nothing
(llava-hf's LLaVA-1.5 template ends an answer with a space), tive follows the model's training format instead:
LLaVA-1.5 was trained with `</s>` after every answer (LLaVA's conversation format v1), so the tokenizer's EOS is
inserted after each answer and labelled. These insertions are the only difference from the processor's own ids.

**Answer spans.** Found by rendering prefixes: the text up to assistant turn i with the generation prompt (P_i)
and the text including turn i (F_i); the characters between them are that answer with its end-of-turn marker and
without the whitespace the template puts after it. The full text is tokenized with character offsets, and a
token is an answer token when it ends inside an answer span (a token that starts in the generation prompt but
carries the answer's first characters counts; one that runs past the span, into the next turn, does not).
Working in characters rather than counting the tokens of each prefix keeps the labels right for tokenizers that
merge across a turn boundary (LLaVA-1.5's answer-closing space is absorbed by the next turn's first word).

**Images.** The processor expands image placeholders into image tokens (a fixed number per image for LLaVA-1.5, a
number that depends on the image's size for LLaVA-NeXT, Qwen2-VL and Idefics3), which shifts an answer by the
number of tokens its preceding images added: the whole expansion when every image comes before it, none when
none does, and otherwise the expansion measured on the prefix with its own images.

**Failures are per record.** Every step is checked; a record that cannot be encoded (an image that cannot be read,
a template that does not render it prefix by prefix, no answer token, no answer token left within
`--max-length`, image tokens past `--max-length`) raises `RecordError` naming the record and the field, which
the stages turn into `skipped: <reason>` or an error (`--on-bad-record`). `--max-length` cuts the end of a
record, never an image's tokens.

`ENCODING_VERSION` is recorded in the warm-up's and the features' provenance: artefacts made with another
encoding are refused rather than mixed with new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tive.data.records import Record
from tive.errors import TiveError

IGNORE_INDEX = -100

ENCODING_VERSION = 2
"""1: the rendered text tokenized without the tokenizer's special tokens (no BOS on Llama-style tokenizers) and
no end-of-turn token where the template has none. 2: the tokenizer's special tokens, exactly one BOS, and an EOS
after each answer where the template closes none (LLaVA-1.5's training format)."""

# Per-token processor outputs (padded along the sequence); everything else is per image (concatenated).
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")

# A conversation used to learn what a processor's template and tokenizer do (two turns: the first answer is
# followed by another turn, the second ends the conversation).
_PROBE = [
    {"role": "user", "content": [{"type": "text", "text": "Is it red?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]},
    {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "No"}]},
]


class RecordError(TiveError):
    """A record that cannot be encoded. The stages skip it or stop, as `--on-bad-record` says.

    Attributes:
        index: the record's position in the input.
        record_id: its id (or None).
        field: the field the problem is in (`conversations`, `image`, ...).
        problem: what is wrong, without the record's name (the `skipped: <reason>` of the manifest).
    """

    def __init__(self, record: Record, field: str, problem: str) -> None:
        self.index = record.index
        self.record_id = record.record_id
        self.field = field
        self.problem = problem
        super().__init__(f"record {record.index} (id {record.record_id!r}), field {field!r}: {problem}")


def record_messages(record: Record) -> list[dict[str, Any]]:
    """The record's turns as chat-template messages."""
    return [{"role": turn.role, "content": turn.content} for turn in record.turns]


def load_images(record: Record) -> list[Any]:
    """The record's images as RGB PIL images (files or embedded bytes)."""
    from tive.data.images import open_images

    return open_images(record)


def _render(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _prefix_spans(processor: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, int]]] | None:
    """The rendered conversation and its answer spans `(start, end, images before)`; None when the template does not
    render the conversation prefix by prefix."""
    full_text = _render(processor, messages, False)
    spans: list[tuple[int, int, int]] = []
    images_seen = 0
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix, upto = _render(processor, messages[:i], True), _render(processor, messages[: i + 1], False)
            if not (upto.startswith(prefix) and full_text.startswith(upto)):
                return None
            spans.append((len(prefix), len(upto.rstrip()), images_seen))
        images_seen += sum(part.get("type") == "image" for part in message["content"])
    return full_text, spans


def answer_char_spans(processor: Any, record: Record) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and its answer spans `(start, end, images before)` in characters.

    Raises:
        RecordError: the chat template does not render this conversation prefix by prefix.
    """
    try:
        found = _prefix_spans(processor, record_messages(record))
    except Exception as exc:  # a template may raise anything (jinja's TemplateError, its own raise_exception)
        raise RecordError(record, "conversations", f"the chat template cannot render it: {exc}") from exc
    if found is None:
        raise RecordError(record, "conversations", "the chat template does not render this conversation prefix by prefix")
    return found


def _plain_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text` without special tokens, and each token's character span (None without offsets)."""
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


@dataclass(frozen=True)
class EncodingPlan:
    """What a processor's tokenizer and template do, learnt once from a probe conversation.

    Attributes:
        add_special_tokens: whether the processor is called with the tokenizer's special tokens (False only when the
            template already renders the tokenizer's BOS: then adding it would give two).
        prefix: the special token ids the tokenizer puts before a text (its BOS), when added.
        suffix_length: how many special tokens the tokenizer puts after a text, when added (rare: an EOS); they
            carry no label.
        bos: where the sequence's BOS comes from: "tokenizer", "template" or "none".
        eos_after_answer: the id inserted (and labelled) after every answer because the template closes answers with
            nothing, or None when the template has its own end-of-turn marker.
    """

    add_special_tokens: bool
    prefix: tuple[int, ...]
    suffix_length: int
    bos: str
    eos_after_answer: int | None

    @classmethod
    def learn(cls, processor: Any) -> EncodingPlan:
        tokenizer = processor.tokenizer
        probe = "Is it red?"
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        prefix: list[int] = []
        suffix: list[int] = []
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                prefix, suffix = full[:start], full[start + len(plain) :]
                break
        found = _prefix_spans(processor, _PROBE)
        if found is None:
            raise TiveError(
                f"{type(processor).__name__}: its chat template does not render a conversation prefix by prefix; "
                "tive cannot find the answers it would label"
            )
        text, spans = found
        rendered = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        template_bos = bool(prefix) and rendered[: len(prefix)] == prefix
        bos = "template" if template_bos else ("tokenizer" if prefix else "none")
        if not prefix and tokenizer.bos_token_id is not None and rendered[:1] == [tokenizer.bos_token_id]:
            bos = "template"
        closes = [not text[start:end].rstrip().endswith(answer) for (start, end, _), answer in zip(spans, ("Yes", "No"))]
        eos = None
        if not all(closes):
            eos = tokenizer.eos_token_id
            if eos is None:
                raise TiveError(
                    f"{type(processor).__name__}: the chat template closes an answer with no end-of-turn marker and "
                    "the tokenizer has no EOS token; set tokenizer.eos_token in the checkpoint"
                )
        if template_bos:
            prefix, suffix = [], []
        return cls(add_special_tokens=not template_bos, prefix=tuple(prefix), suffix_length=len(suffix), bos=bos,
                   eos_after_answer=eos)

    def describe(self, processor: Any) -> dict[str, Any]:
        """For provenance and the user: the encoding version, where BOS comes from, how answers end."""
        tokenizer = processor.tokenizer
        return {
            "version": ENCODING_VERSION,
            "bos": self.bos,
            "end_of_turn": "template" if self.eos_after_answer is None
            else f"{tokenizer.convert_ids_to_tokens(self.eos_after_answer)} added after each answer",
        }


@dataclass
class Encoded:
    """One encoded record: model inputs (`input_ids`, `attention_mask`, `labels` 1-D, image tensors) and whether
    `--max-length` cut it."""

    inputs: dict[str, Any]
    truncated: bool = False


class Encoder:
    """Encodes records for one processor (see the module docstring); picklable, so DataLoader workers can use it.

    Args:
        processor: the model's processor (tokenizer, image processor, chat template).
        max_length: cut records to this many tokens (never an image's tokens), or None.
    """

    def __init__(self, processor: Any, max_length: int | None = None) -> None:
        self.processor = processor
        self.max_length = max_length
        self.plan = EncodingPlan.learn(processor)
        self.image_ids = image_token_ids(processor)

    def describe(self) -> dict[str, Any]:
        return self.plan.describe(self.processor)

    def encode(self, record: Record) -> Encoded:
        """The record's model inputs; raises RecordError naming the record when it cannot be encoded."""
        inputs = self._encode_full(record)
        truncated = False
        if self.max_length and len(inputs["input_ids"]) > self.max_length:
            inputs = truncate_encoded(inputs, self.max_length, self.image_ids, record)
            truncated = True
            if not (inputs["labels"] != IGNORE_INDEX).any():
                raise RecordError(
                    record, "conversations", f"no answer token within --max-length {self.max_length}; raise it"
                )
        return Encoded(inputs, truncated)

    def _encode_full(self, record: Record) -> dict[str, Any]:
        processor, plan = self.processor, self.plan
        tokenizer = processor.tokenizer
        full_text, spans = answer_char_spans(processor, record)
        plain_ids, ranges = _answer_token_ranges(tokenizer, full_text, spans)
        images = _record_images(record)
        try:
            encoded = processor(
                text=[full_text], images=images or None, add_special_tokens=plan.add_special_tokens, return_tensors="pt"
            )
        except Exception as exc:  # the processor refuses the record (e.g. image tokens that do not match its images)
            raise RecordError(record, "conversations", f"the processor cannot encode it: {exc}") from exc
        input_ids = encoded["input_ids"][0]
        total_shift = len(input_ids) - len(plain_ids)  # BOS + image expansion + any special suffix
        bos = len(plan.prefix)
        labels = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
        answers: list[tuple[int, int]] = []
        for first, stop, char_start, n_images in ranges:
            if first == stop:
                continue
            if n_images == len(images):
                shift = total_shift - plan.suffix_length
            elif n_images == 0:
                shift = bos
            else:  # some images come later: measure what this answer's preceding images add
                prefix = full_text[:char_start]
                expanded = processor(text=[prefix], images=images[:n_images], add_special_tokens=False)["input_ids"][0]
                shift = bos + len(expanded) - len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            if input_ids[first + shift : stop + shift].tolist() != plain_ids[first:stop]:
                raise RecordError(record, "conversations", "answer tokens are not where the chat template puts them")
            labels[first + shift : stop + shift] = input_ids[first + shift : stop + shift]
            answers.append((first + shift, stop + shift))
        if not answers:
            raise RecordError(record, "conversations", "no answer token to learn from (every answer is empty)")
        out: dict[str, Any] = {}
        for key, value in encoded.items():
            if key in _SEQUENCE_KEYS or (getattr(value, "ndim", 0) == 2 and value.shape == encoded["input_ids"].shape):
                out[key] = value[0]
            else:
                out[key] = value
        out["labels"] = labels
        if plan.eos_after_answer is not None:
            out = _insert_after(out, [stop for _, stop in answers], plan.eos_after_answer)
        return out


def _record_images(record: Record) -> list[Any]:
    """The record's images; an image that cannot be read is this record's RecordError, naming the image's field."""
    try:
        return load_images(record)
    except TiveError:
        raise
    except Exception as exc:  # Pillow raises OSError (truncated), FileNotFoundError, SyntaxError, ...
        position = _failing_image(record)
        field = record.image_field(position) if position is not None else "image"
        written = record.images[position] if position is not None else "?"
        raise RecordError(record, field, f"cannot read image {written!r}: {str(exc) or type(exc).__name__}") from exc


def _failing_image(record: Record) -> int | None:
    """The position of the first image of `record` that does not load (for the message)."""
    from PIL import Image

    from tive.data.images import open_image

    for position in range(len(record.images)):
        try:
            with Image.open(open_image(record, position)) as image:
                image.load()
        except Exception:
            return position
    return None


def _insert_after(inputs: dict[str, Any], positions: list[int], token_id: int) -> dict[str, Any]:
    """`inputs` with `token_id` inserted (and labelled) at each position, in every per-token tensor."""
    import torch

    length = len(inputs["input_ids"])
    out = dict(inputs)
    for key, value in inputs.items():
        if not _is_sequence(key, value, length):
            continue
        pieces, last = [], 0
        for position in positions:
            pieces.append(value[last:position])
            if key in ("input_ids", "labels"):
                fill = token_id
            elif key == "attention_mask":
                fill = 1
            else:  # type ids and the like: those of the answer's last token
                fill = value[position - 1]
            pieces.append(value.new_full((1,), int(fill)))
            last = position
        pieces.append(value[last:])
        out[key] = torch.cat(pieces)
    return out


def encode_record(processor: Any, record: Record) -> dict[str, Any]:
    """Model inputs for one record (see `Encoder`); raises RecordError when it cannot be encoded."""
    return Encoder(processor).encode(record).inputs


def truncate_encoded(encoded: dict[str, Any], max_length: int, image_ids: set[int], record: Record) -> dict[str, Any]:
    """`encoded` cut to its first `max_length` tokens (unchanged when it fits).

    Only the end of the conversation is cut, never an image's tokens: a record whose image tokens reach past
    `max_length` raises RecordError (its image features would no longer match its image tokens). The labels of the
    answer tokens that remain are kept; there may be none left.
    """
    import torch

    length = len(encoded["input_ids"])
    if length <= max_length:
        return encoded
    if image_ids:
        is_image = torch.isin(encoded["input_ids"], torch.tensor(sorted(image_ids)))
        last = int(is_image.nonzero().max()) if is_image.any() else -1
        if last >= max_length:
            raise RecordError(
                record, "image",
                f"its image tokens run to position {last + 1} of {length}, past --max-length {max_length}; images "
                "are never cut: raise --max-length",
            )
    return {
        key: value[:max_length] if _is_sequence(key, value, length) else value for key, value in encoded.items()
    }


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
