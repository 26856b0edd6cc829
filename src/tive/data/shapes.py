"""Parsing one instruction record, whatever its shape, into a normalised `Record`.

Four record shapes are recognised, per record (a file may mix them):

- LLaVA / ShareGPT `conversations`::

    {"id": ..., "image": "a.jpg" | ["a.jpg", ...], "system_prompt": "...",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

- LLaMA-Factory / ShareGPT `messages` with text content and an `images` list::

    {"messages": [{"role": "user", "content": "<image>Who are they?"}, {"role": "assistant", "content": "..."}],
     "images": ["mllm_demo_data/1.jpg"]}

- OpenAI-style content parts (the position of an image part is where the image goes)::

    {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "a.jpg" | "data:image/png;base64,..." | "https://..."}},
        {"type": "text", "text": "What is this?"}]}, ...]}

  also `{"type": "image_url", "image_url": "a.jpg"}`, `{"type": "image", "image": "a.jpg"}`, LLaMA-Factory v1's
  `{"type": "image_url" | "text", "value": ...}`, and a bare `{"type": "image"}` (Hugging Face / TRL datasets),
  which, like an `<image>` placeholder, refers to the next entry of the record's `images` list.

- instruction / output (Alpaca, LLaVA's GPT-4 QA files): `instruction`, optional `input` (appended on a new
  line), `output`, optional `history` (earlier `[question, answer]` pairs), optional `image`/`images`.

In every shape the images of the record-level `image`/`images` list are placed by `<image>` placeholders (or bare
image parts), in order; with none, they go to the start of the first user turn (LLaVA's convention). A
`system_prompt` (lmms-finetune) or `system` (LLaMA-Factory) string becomes a leading system turn. An image is a
path, a `file://` URL, a `data:` URL (decoded to bytes), an `http(s)://` URL (kept; the image check reports that
it cannot be fetched offline), or, from Parquet and `datasets`, embedded bytes.

Values that are None count as absent, because Arrow tables fill the keys a row does not use with nulls.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tive.data.records import (
    SHAPE_INSTRUCTION,
    SHAPE_LLAVA,
    SHAPE_OPENAI,
    SHAPE_SHAREGPT,
    EmbeddedImage,
    Record,
    Turn,
)
from tive.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
DATA_JUICER_IMAGE_TOKEN = "<__dj__image>"
EMBEDDED_NAME = "<embedded image>"

# Speaker names as written in LLaVA / ShareGPT / OpenAI-style files, mapped to the chat-template roles.
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

_SCALAR_TYPES = (str, int, float, bool)

_RECORD_HINT = (
    'a LLaVA record needs "conversations": a list of {"from": "human"|"gpt"|"system", "value": "..."} turns'
)
_MESSAGES_HINT = (
    '"messages" must be a list of {"role": "user"|"assistant"|"system", "content": ...} where content is a '
    'string (with <image> placeholders) or a list of {"type": "text", "text": ...} / '
    '{"type": "image_url", "image_url": {"url": ...}} / {"type": "image", ...} parts'
)
SUPPORTED_SHAPES_HINT = (
    'supported record shapes: LLaVA {"conversations": [{"from", "value"}], "image"}; LLaMA-Factory/ShareGPT '
    '{"messages": [{"role", "content": "..."}], "images"}; OpenAI-style {"messages": [{"role", "content": '
    '[{"type": "text"|"image_url"|"image", ...}]}]}; instruction {"instruction", "input"?, "output", "image"?}'
)

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

Fail = Callable[[str | None, str, str], DataError]


def is_remote_url(written: str) -> bool:
    """Whether an image reference is a URL that would need the network (any scheme but `file://`)."""
    match = _URL_SCHEME.match(written)
    return bool(match) and match.group(1).lower() != "file"


@dataclass
class _Image:
    """One image of a record while parsing: its label (as written), embedded bytes if any, and its field."""

    label: str
    data: EmbeddedImage | None
    field: str


def type_name(value: Any) -> str:
    """A user-facing name for a JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, EmbeddedImage):
        return "an embedded image"
    return type(value).__name__


def _get(mapping: dict[str, Any], key: str) -> Any:
    """mapping[key], with a missing key and a null value alike giving None."""
    return mapping.get(key)


# ---------------------------------------------------------------------------------------------------- dispatch
def parse_record(raw: Any, index: int, path: Path) -> Record:
    """Validate one record of any supported shape and normalise it into a `Record`.

    The shape is chosen by the record's own fields: `conversations` (LLaVA), `messages` (ShareGPT or
    OpenAI-style, by the type of `content`), `instruction` + `output`.

    Args:
        raw: the parsed record object.
        index: the record's position in the input (for messages and `Record.index`).
        path: the file or directory it came from (for messages).

    Returns:
        The normalised record; `raw` itself is never modified.

    Raises:
        DataError: naming the file, the record (index and id), the field and what to do.
    """
    if not isinstance(raw, dict):
        raise DataError(path, index, None, None, f"the record is {type_name(raw)}, not an object", _RECORD_HINT)
    has_conversations = _get(raw, "conversations") is not None
    has_messages = _get(raw, "messages") is not None
    if has_conversations and has_messages:
        raise DataError(
            path,
            index,
            _scalar_id(raw),
            "messages",
            "the record has both 'conversations' and 'messages'",
            "keep one of them: the conversation must be given once",
        )
    if has_messages:
        return parse_messages_record(raw, index, path)
    if has_conversations:
        return parse_llava_record(raw, index, path)
    if _get(raw, "instruction") is not None or _get(raw, "output") is not None:
        return parse_instruction_record(raw, index, path)

    record_id = _scalar_id(raw)
    fields = ", ".join(repr(key) for key in raw) or "none"
    text = _get(raw, "text")
    if isinstance(text, str):
        what = "a text record"
        if DATA_JUICER_IMAGE_TOKEN in text:
            what = f"a Data-Juicer record (text with {DATA_JUICER_IMAGE_TOKEN} tokens)"
        raise DataError(
            path,
            index,
            record_id,
            "text",
            f"this is {what} without an instruction/answer pair (its fields: {fields}); tive selects "
            "instruction data, where every record has a question and an answer to learn from",
            SUPPORTED_SHAPES_HINT,
        )
    raise DataError(
        path,
        index,
        record_id,
        "conversations",
        f"the record has no 'conversations', 'messages' or 'instruction'/'output' (its fields: {fields})",
        SUPPORTED_SHAPES_HINT,
    )


def _scalar_id(raw: dict[str, Any]) -> Any:
    """The record's id when it is a usable scalar (for messages about records rejected before the id check)."""
    value = _get(raw, "id")
    return value if isinstance(value, _SCALAR_TYPES) else None


def _begin(raw: dict[str, Any], index: int, path: Path) -> tuple[Any, Fail]:
    """The record id (checked) and a function that builds this record's DataError."""
    record_id = _get(raw, "id")

    def fail(field: str | None, problem: str, hint: str) -> DataError:
        return DataError(path, index, record_id, field, problem, hint)

    if record_id is not None and not isinstance(record_id, _SCALAR_TYPES):
        raise fail("id", f"the id is {type_name(record_id)}", "an id must be a string or a number")
    return record_id, fail


# ------------------------------------------------------------------------------------------------------ LLaVA
def parse_llava_record(raw: Any, index: int, path: Path) -> Record:
    """Validate one LLaVA (`conversations`) record and normalise it into a `Record`.

    Normalisation: speakers become system/user/assistant; each `<image>` placeholder becomes an image part at
    its position, dropping the newline that conventionally separates it from the text; a record with images but
    no placeholder gets one image part per image at the start of its first user turn (LLaVA's convention); a
    `system_prompt` string becomes a leading system turn. `raw` itself is never modified.

    Raises:
        DataError: naming the file, the record (index and id), the field and what to do, when the record is not
            an object, lacks a usable `conversations` list, has a bad turn, an unknown speaker, no assistant
            answer, a bad `image` value, or placeholders that do not match its images.
    """
    if not isinstance(raw, dict):
        raise DataError(path, index, None, None, f"the record is {type_name(raw)}, not an object", _RECORD_HINT)
    record_id, fail = _begin(raw, index, path)
    images = _record_images(raw, fail)
    turns_raw = _conversation_list(raw, fail)

    turns = _system_turns(raw, fail)
    for turn_index, turn in enumerate(turns_raw):
        field = f"conversations[{turn_index}]"
        if not isinstance(turn, dict):
            raise fail(field, f"the turn is {type_name(turn)}, not an object", _RECORD_HINT)
        speaker = _get(turn, "from")
        if speaker is None:
            raise fail(f"{field}.from", "the turn has no 'from'", 'give each turn "from": "human" or "gpt"')
        role = _role(speaker, f"{field}.from", fail, '"human" (or "user"), "gpt" (or "assistant") or "system"')
        value = _get(turn, "value")
        if value is None:
            raise fail(f"{field}.value", "the turn has no 'value'", 'give each turn its text in "value"')
        if not isinstance(value, str):
            raise fail(f"{field}.value", f"'value' is {type_name(value)}", '"value" must be a string')
        turns.append(Turn(role=role, content=_split_placeholders(value)))

    _require_answer(turns, fail, "conversations", 'add a "gpt" turn with the answer, or remove the record')
    return _finish(raw, index, record_id, turns, images, fail, "conversations", SHAPE_LLAVA)


def _conversation_list(raw: dict[str, Any], fail: Fail) -> list[Any]:
    """The record's `conversations`, checked to be a non-empty list."""
    if _get(raw, "conversations") is None:
        fields = ", ".join(repr(key) for key in raw) or "none"
        raise fail("conversations", f"the record has no 'conversations' (its fields: {fields})", _RECORD_HINT)
    conversations = raw["conversations"]
    if not isinstance(conversations, list):
        raise fail("conversations", f"'conversations' is {type_name(conversations)}, not a list", _RECORD_HINT)
    if not conversations:
        raise fail("conversations", "'conversations' is empty", _RECORD_HINT)
    return conversations


# --------------------------------------------------------------------------------------------------- messages
def parse_messages_record(raw: Any, index: int, path: Path) -> Record:
    """Validate one `messages` record (LLaMA-Factory/ShareGPT text content or OpenAI-style content parts).

    Raises:
        DataError: naming the field, e.g. `messages[1].content`, `messages[0].content[2].image_url`, `images`.
    """
    if not isinstance(raw, dict):
        raise DataError(path, index, None, None, f"the record is {type_name(raw)}, not an object", _MESSAGES_HINT)
    record_id, fail = _begin(raw, index, path)
    images = _record_images(raw, fail)
    messages = _get(raw, "messages")
    if not isinstance(messages, list):
        raise fail("messages", f"'messages' is {type_name(messages)}, not a list", _MESSAGES_HINT)
    if not messages:
        raise fail("messages", "'messages' is empty", _MESSAGES_HINT)

    turns = _system_turns(raw, fail)
    has_parts = False
    for message_index, message in enumerate(messages):
        field = f"messages[{message_index}]"
        if not isinstance(message, dict):
            raise fail(field, f"the message is {type_name(message)}, not an object", _MESSAGES_HINT)
        role_key = "role" if _get(message, "role") is not None else "from"
        speaker = _get(message, role_key)
        if speaker is None:
            raise fail(f"{field}.role", "the message has no 'role'", 'give each message "role": "user" or "assistant"')
        role = _role(speaker, f"{field}.{role_key}", fail, '"user", "assistant" or "system"')
        content_key = "value" if _get(message, "content") is None and _get(message, "value") is not None else "content"
        content = _get(message, content_key)
        content_field = f"{field}.{content_key}"
        if isinstance(content, str):
            parts = _split_placeholders(content)
        elif isinstance(content, list):
            has_parts = True
            parts = _content_parts(content, content_field, fail)
        elif content is None:
            raise fail(
                content_field,
                "'content' is null" if "content" in message else "the message has no 'content'",
                "every message needs its text (tool calls are not supported)",
            )
        else:
            raise fail(content_field, f"'content' is {type_name(content)}", _MESSAGES_HINT)
        turns.append(Turn(role=role, content=parts))

    _require_answer(turns, fail, "messages", 'add an "assistant" message with the answer, or remove the record')
    shape = SHAPE_OPENAI if has_parts else SHAPE_SHAREGPT
    return _finish(raw, index, record_id, turns, images, fail, "messages", shape)


def _content_parts(content: list[Any], field: str, fail: Fail) -> list[dict[str, Any]]:
    """OpenAI-style content parts -> normalised parts (image parts carry their source or refer to `images`)."""
    parts: list[dict[str, Any]] = []
    for part_index, part in enumerate(content):
        where = f"{field}[{part_index}]"
        if not isinstance(part, dict):
            raise fail(where, f"the content part is {type_name(part)}, not an object", _MESSAGES_HINT)
        kind = _get(part, "type")
        if not isinstance(kind, str):
            raise fail(
                f"{where}.type",
                "the content part has no 'type'" if kind is None else f"'type' is {type_name(kind)}",
                'give each part "type": "text", "image_url" or "image"',
            )
        if kind == "text":
            key = "text" if _get(part, "text") is not None else "value"
            text = _get(part, key)
            if not isinstance(text, str):
                raise fail(
                    f"{where}.text",
                    "the text part has no 'text'" if text is None else f"'text' is {type_name(text)}",
                    'a text part is {"type": "text", "text": "..."}',
                )
            parts.extend(_split_placeholders(text))
        elif kind in ("image_url", "image"):
            key = next((k for k in (kind, "value", "url") if _get(part, k) is not None), None)
            if key is None:
                if kind == "image_url":
                    raise fail(
                        f"{where}.image_url",
                        "the image_url part has no 'image_url'",
                        'an image_url part is {"type": "image_url", "image_url": {"url": "..."}}',
                    )
                parts.append({"type": "image", "_ref": True})  # refers to the record's `images` list
                continue
            value = part[key]
            source_field = f"{where}.{key}"
            if kind == "image_url" and key == "image_url" and isinstance(value, dict):
                if not isinstance(_get(value, "url"), str):
                    raise fail(
                        source_field,
                        "'image_url' has no 'url' string",
                        'write {"type": "image_url", "image_url": {"url": "..."}}',
                    )
                value = value["url"]
            parts.append({"type": "image", "_image": _image_item(value, source_field, fail)})
        else:
            raise fail(
                f"{where}.type",
                f"unsupported content part type {kind!r}",
                'only "text", "image_url" and "image" parts are supported',
            )
    return parts


# ------------------------------------------------------------------------------------------------ instruction
def parse_instruction_record(raw: Any, index: int, path: Path) -> Record:
    """Validate one instruction/output record (Alpaca style, LLaVA's GPT-4 QA files) as a conversation.

    `instruction` (+ `input` on a new line) is the question and `output` the answer; `history` (a list of
    `[question, answer]` pairs) comes before them.

    Raises:
        DataError: naming `instruction`, `input`, `output`, `history[i]` or `image`/`images`.
    """
    hint = 'an instruction record is {"instruction": "...", "output": "...", "input"?: "...", "image"?: ...}'
    if not isinstance(raw, dict):
        raise DataError(path, index, None, None, f"the record is {type_name(raw)}, not an object", hint)
    record_id, fail = _begin(raw, index, path)
    images = _record_images(raw, fail)
    texts: dict[str, str] = {}
    for key in ("instruction", "output"):
        value = _get(raw, key)
        if value is None:
            raise fail(key, f"the record has no {key!r}", hint)
        if not isinstance(value, str):
            raise fail(key, f"{key!r} is {type_name(value)}, not a string", hint)
        texts[key] = value
    extra = _get(raw, "input")
    if extra is not None and not isinstance(extra, str):
        raise fail("input", f"'input' is {type_name(extra)}, not a string", hint)
    question = texts["instruction"] + ("\n" + extra if extra else "")

    turns = _system_turns(raw, fail)
    history = _get(raw, "history")
    if history is not None:
        pair_hint = '"history" is a list of ["question", "answer"] pairs'
        if not isinstance(history, list):
            raise fail("history", f"'history' is {type_name(history)}, not a list", pair_hint)
        for pair_index, pair in enumerate(history):
            field = f"history[{pair_index}]"
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise fail(field, "not a pair of strings", pair_hint)
            turns.append(Turn(role="user", content=_split_placeholders(pair[0])))
            turns.append(Turn(role="assistant", content=_split_placeholders(pair[1])))
    turns.append(Turn(role="user", content=_split_placeholders(question)))
    turns.append(Turn(role="assistant", content=_split_placeholders(texts["output"])))
    if not texts["output"].strip():
        raise fail(
            "output", "'output' is empty, so there is nothing to learn from", "give the answer, or remove the record"
        )
    return _finish(raw, index, record_id, turns, images, fail, "instruction", SHAPE_INSTRUCTION)


# -------------------------------------------------------------------------------------------------- shared
def _role(speaker: Any, field: str, fail: Fail, allowed: str) -> str:
    if not isinstance(speaker, str):
        raise fail(field, f"the speaker is {type_name(speaker)}", f"use {allowed}")
    role = _ROLES.get(speaker.strip().lower())
    if role is None:
        raise fail(field, f"unknown speaker {speaker!r}", f"use {allowed}")
    return role


def _system_turns(raw: dict[str, Any], fail: Fail) -> list[Turn]:
    """A leading system turn from `system_prompt` (lmms-finetune) or `system` (LLaMA-Factory), if given."""
    given = [key for key in ("system_prompt", "system") if _get(raw, key) is not None]
    if len(given) > 1:
        raise fail("system", "the record has both 'system_prompt' and 'system'", "give the system prompt once")
    if not given:
        return []
    key = given[0]
    value = raw[key]
    if not isinstance(value, str):
        raise fail(key, f"{key} is {type_name(value)}", f"{key} must be a string (or leave it out)")
    if not value.strip():
        return []
    return [Turn(role="system", content=[{"type": "text", "text": value}])]


def _require_answer(turns: list[Turn], fail: Fail, field: str, hint: str) -> None:
    if not any(turn.role == "assistant" and turn.text().strip() for turn in turns):
        raise fail(field, "the record has no assistant answer, so there is nothing to learn from", hint)


def _record_images(raw: dict[str, Any], fail: Fail) -> list[_Image]:
    """The record-level images (`image` or `images`): absent/null, one image, or a list of them."""
    given = [key for key in ("image", "images") if _get(raw, key) is not None]
    if len(given) > 1:
        raise fail("images", "the record has both 'image' and 'images'", "list all the record's images in one of them")
    if not given:
        return []
    key = given[0]
    value = raw[key]
    hint = (
        f'"{key}" must be a non-empty path string or a list of them (or leave it out for a text-only record)'
    )
    if isinstance(value, list):
        images = []
        for position, item in enumerate(value):
            if isinstance(item, str) and not item.strip():
                raise fail(key, f"{key!r} item {position} is an empty string", hint)
            if not isinstance(item, (str, dict, EmbeddedImage)):
                raise fail(key, f"{key!r} item {position} is {type_name(item)}, not a string", hint)
            images.append(_image_item(item, key, fail))
        return images
    if isinstance(value, str) and not value.strip():
        raise fail(key, f"{key!r} is an empty string", hint)
    if not isinstance(value, (str, dict, EmbeddedImage)):
        raise fail(key, f"{key!r} is {type_name(value)}", hint)
    return [_image_item(value, key, fail)]


def _image_item(value: Any, field: str, fail: Fail) -> _Image:
    """One image reference: a path, a URL, a `data:` URL, an embedded image or a `{"bytes", "path"}` value."""
    hint = "an image is a path, a file:// or data: URL, or embedded bytes"
    if isinstance(value, EmbeddedImage):
        return _Image(value.name or EMBEDDED_NAME, value, field)
    if isinstance(value, dict):
        data, name = _get(value, "bytes"), _get(value, "path")
        if isinstance(data, (bytes, bytearray)):
            return _Image(name if isinstance(name, str) else EMBEDDED_NAME, EmbeddedImage(name, bytes(data)), field)
        if isinstance(_get(value, "url"), str):
            return _image_item(value["url"], field, fail)
        if isinstance(name, str) and name.strip():
            return _Image(name, None, field)
        raise fail(field, "the image value has neither 'bytes' nor a 'path'", hint)
    if not isinstance(value, str):
        raise fail(field, f"the image is {type_name(value)}", hint)
    if not value.strip():
        raise fail(field, "the image is an empty string", hint)
    if value[:5].lower() == "data:":
        return _data_url(value, field, fail)
    if value[:7].lower() == "file://":
        local = urllib.parse.unquote(urllib.parse.urlsplit(value).path)
        if not local:
            raise fail(field, f"the file URL {value!r} has no path", hint)
        return _Image(local, None, field)
    return _Image(value, None, field)


def _data_url(value: str, field: str, fail: Fail) -> _Image:
    """Decode a `data:[<mediatype>][;base64],<data>` URL into an embedded image."""
    hint = 'a data URL is "data:image/png;base64,<base64 bytes>"'
    header, comma, payload = value.partition(",")
    if not comma:
        raise fail(field, "the data: URL has no ',' before its data", hint)
    params = header[5:].split(";")
    media_type = params[0] or "text/plain"
    try:
        if any(param.strip().lower() == "base64" for param in params[1:]):
            data = base64.b64decode("".join(payload.split()), validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as err:
        raise fail(field, f"the data: URL's base64 data is invalid: {err}", hint) from None
    if not data:
        raise fail(field, "the data: URL holds no data", hint)
    label = f"data:{media_type} ({len(data)} bytes)"
    return _Image(label, EmbeddedImage(label, data), field)


def _finish(
    raw: dict[str, Any],
    index: int,
    record_id: Any,
    turns: list[Turn],
    images: list[_Image],
    fail: Fail,
    conversation_field: str,
    shape: str,
) -> Record:
    """Place the record-level images, check the counts, and build the `Record`."""
    image_key = next((key for key in ("image", "images") if _get(raw, key) is not None), "image")
    n_refs = sum(1 for turn in turns for part in turn.content if part.get("_ref"))
    refs = "<image> placeholder(s)"
    if shape == SHAPE_OPENAI:
        refs = 'image placeholder(s) (<image> or bare {"type": "image"} parts)'

    if n_refs == 0 and images:
        first_user = next((turn for turn in turns if turn.role == "user"), None)
        if first_user is None:
            raise fail(
                conversation_field,
                f"the record has {len(images)} image(s) but no user turn to attach them to",
                "add a user turn, or put <image> placeholders where the images belong",
            )
        first_user.content[:0] = [{"type": "image", "_ref": True} for _ in images]
    elif n_refs != len(images):
        if not images:
            raise fail(
                conversation_field,
                f"the conversation has {n_refs} {refs} but the record has no image",
                f'add the image path(s) in "{image_key}", or remove the <image> placeholder(s)',
            )
        raise fail(
            conversation_field,
            f"the conversation has {n_refs} {refs} but {image_key!r} lists {len(images)}",
            f"give one <image> placeholder per image, in the order of the {image_key!r} list",
        )

    pending = iter(images)
    ordered: list[_Image] = []
    for turn in turns:
        for position, part in enumerate(turn.content):
            if part["type"] != "image":
                continue
            ordered.append(next(pending) if part.get("_ref") else part["_image"])
            turn.content[position] = {"type": "image"}

    embedded = [image.data for image in ordered]
    return Record(
        index=index,
        record_id=record_id,
        turns=turns,
        images=[image.label for image in ordered],
        raw=raw,
        image_data=embedded if any(data is not None for data in embedded) else [],
        image_fields=[image.field for image in ordered],
        shape=shape,
    )


def _split_placeholders(value: str) -> list[dict[str, Any]]:
    """Turn a text into chat-template content parts, each `<image>` becoming an image part at its position.

    "<image>\\nWhat?" -> [image, text "What?"]; "What?\\n<image>" -> [text "What?", image]. Only the one line
    break touching a placeholder is dropped; all other text is kept as written. The image parts refer to the
    record's `image`/`images` list, in order.
    """
    if IMAGE_PLACEHOLDER not in value:
        return [{"type": "text", "text": value}]
    pieces = value.split(IMAGE_PLACEHOLDER)
    content: list[dict[str, Any]] = []
    last = len(pieces) - 1
    for position, piece in enumerate(pieces):
        if position > 0:
            content.append({"type": "image", "_ref": True})
            piece = _strip_one_newline(piece, leading=True)
        if position < last:
            piece = _strip_one_newline(piece, leading=False)
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def _strip_one_newline(text: str, leading: bool) -> str:
    """Drop one line break (LF or CRLF) at the start (leading) or end of `text`."""
    if leading:
        for newline in ("\r\n", "\n"):
            if text.startswith(newline):
                return text[len(newline) :]
        return text
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            return text[: -len(newline)]
    return text
