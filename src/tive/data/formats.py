"""Reading LLaVA-format instruction data into `Record`s and writing a selected subset back unchanged.

Two containers are read, told apart by content rather than by suffix (files are often misnamed):

- JSON: a top-level list of record objects (the first non-space character is `[`);
- JSONL: one record object per line; blank lines are allowed and do not count as records.

Each record is LLaVA style::

    {"id": ..., "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat."}]}

`id` and `image` are optional; a `system_prompt` string (lmms-finetune) becomes a leading system turn. The
record is normalised into `Turn`s whose `<image>` placeholders become `{"type": "image"}` parts, so the model
side never has to know the file format. The original object is kept as `Record.raw` and is the only thing the
writer uses: the subset is the input's own records, byte-identical lines for JSONL.

The input file is only ever opened for reading.
"""

from __future__ import annotations

import json
import operator
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tive.data.records import Record, Turn
from tive.errors import DataError, TiveError

IMAGE_PLACEHOLDER = "<image>"

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


@dataclass
class Dataset:
    """An input file, loaded.

    Attributes:
        path: the file it was read from.
        format: "json" (a top-level list) or "jsonl" (one object per line).
        records: one `Record` per input record, in file order (`records[i].index == i`).
        raw_lines: for JSONL, each record's original line text (without its line ending), so that a subset can
            be written back byte-identical; None for JSON.
    """

    path: Path
    format: str
    records: list[Record]
    raw_lines: list[str] | None


def load_dataset(path: Path | str) -> Dataset:
    """Read and validate a LLaVA-format JSON or JSONL file.

    The container is detected from the content (first non-space character `[` means a JSON list, `{` means
    JSON lines), because instruction files are often named `.json` while holding JSON lines or the
    other way round. Every record is parsed and validated up front so that a bad record is reported before any
    expensive stage starts.

    Args:
        path: the dataset file.

    Returns:
        The loaded dataset.

    Raises:
        TiveError: the file is missing, unreadable, not UTF-8, not valid JSON (with line and column), empty, or
            its top level is not a list.
        DataError: a JSONL line is not valid JSON, or a record is not a valid LLaVA record.
    """
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise TiveError(f"{path}: the file is empty (expected a JSON list of records or JSON lines)")

    if stripped[0] != "{":
        # "[" is a JSON list; anything else that is not an object cannot be JSON lines of records either, so
        # parse it as one document to report "not valid JSON at line/column" or "top level is not a list".
        fmt = "json"
        raw_records = _parse_json_list(path, text)
        raw_lines = None
    else:
        fmt = "jsonl"
        raw_records, raw_lines = _parse_jsonl(path, text)

    if not raw_records:
        raise TiveError(f"{path}: the file holds no records")

    records = [parse_llava_record(raw, index, path) for index, raw in enumerate(raw_records)]
    return Dataset(path=path, format=fmt, records=records, raw_lines=raw_lines)


def _read_text(path: Path) -> str:
    """The file's text; read-only, decoded as UTF-8 (a byte-order mark is tolerated)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise TiveError(f"{path}: dataset file not found (check the path)") from None
    except IsADirectoryError:
        raise TiveError(f"{path}: is a directory, not a dataset file (give the .json or .jsonl file)") from None
    except OSError as err:
        raise TiveError(f"{path}: cannot read the dataset file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TiveError(
            f"{path}: not UTF-8 text (invalid byte at offset {err.start}); save the file as UTF-8"
        ) from None


def _parse_json_list(path: Path, text: str) -> list[Any]:
    """Parse a whole-file JSON document that must be a list."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise TiveError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg} "
            "(a JSON dataset must be one complete list of records; JSON lines must not start with '[')"
        ) from None
    if not isinstance(value, list):
        raise TiveError(f"{path}: the top level is {_type_name(value)}, not a list of records")
    return value


def _parse_jsonl(path: Path, text: str) -> tuple[list[Any], list[str]]:
    """Parse JSON lines; returns the objects and each one's original line text."""
    records: list[Any] = []
    lines: list[str] = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which may legally
    # appear unescaped inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        index = len(records)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            if lineno == 1 and line.lstrip().startswith("{"):
                _refuse_single_json_object(path, text)
            raise DataError(
                path,
                index,
                None,
                None,
                f"line {lineno} is not valid JSON (column {err.colno}: {err.msg})",
                "in a JSONL file every non-blank line must be one complete JSON object",
            ) from None
        records.append(value)
        lines.append(line)
    return records, lines


def _refuse_single_json_object(path: Path, text: str) -> None:
    """Give the clear error for a pretty-printed JSON object where a list of records was expected."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return
    raise TiveError(
        f"{path}: the top level is {_type_name(value)}, not a list of records "
        "(expected a JSON list, or JSON lines with one record per line)"
    )


def _type_name(value: Any) -> str:
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
    return type(value).__name__


def parse_llava_record(raw: dict, index: int, path: Path) -> Record:
    """Validate one LLaVA record and normalise it into a `Record`.

    Normalisation: speakers become system/user/assistant; each `<image>` placeholder becomes an image part at
    its position, dropping the newline that conventionally separates it from the text; a record with images but
    no placeholder gets one image part per image at the start of its first user turn (LLaVA's convention); a
    `system_prompt` string becomes a leading system turn. `raw` itself is never modified.

    Args:
        raw: the parsed record object.
        index: the record's position in the file (for messages and `Record.index`).
        path: the file it came from (for messages).

    Returns:
        The normalised record.

    Raises:
        DataError: naming the file, the record (index and id), the field and what to do, when the record is not
            an object, lacks a usable `conversations` list, has a bad turn, an unknown speaker, no assistant
            answer, a bad `image` value, or placeholders that do not match its images.
    """
    if not isinstance(raw, dict):
        raise DataError(
            path, index, None, None, f"the record is {_type_name(raw)}, not an object", _RECORD_HINT
        )

    record_id = raw.get("id")

    def fail(field: str | None, problem: str, hint: str) -> DataError:
        return DataError(path, index, record_id, field, problem, hint)

    if record_id is not None and not isinstance(record_id, _SCALAR_TYPES):
        raise fail("id", f"the id is {_type_name(record_id)}", "an id must be a string or a number")

    images = _parse_images(raw, fail)
    turns_raw = _conversation_list(raw, fail)

    turns: list[Turn] = []
    system_prompt = raw.get("system_prompt")
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise fail(
                "system_prompt",
                f"system_prompt is {_type_name(system_prompt)}",
                "system_prompt must be a string (or leave it out)",
            )
        if system_prompt.strip():
            turns.append(Turn(role="system", content=[{"type": "text", "text": system_prompt}]))

    n_placeholders = 0
    for turn_index, turn in enumerate(turns_raw):
        field = f"conversations[{turn_index}]"
        if not isinstance(turn, dict):
            raise fail(field, f"the turn is {_type_name(turn)}, not an object", _RECORD_HINT)
        if "from" not in turn:
            raise fail(f"{field}.from", "the turn has no 'from'", 'give each turn "from": "human" or "gpt"')
        speaker = turn["from"]
        if not isinstance(speaker, str):
            raise fail(
                f"{field}.from", f"'from' is {_type_name(speaker)}", '"from" must be "human", "gpt" or "system"'
            )
        role = _ROLES.get(speaker.strip().lower())
        if role is None:
            raise fail(
                f"{field}.from",
                f"unknown speaker {speaker!r}",
                'use "human" (or "user"), "gpt" (or "assistant") or "system"',
            )
        if "value" not in turn:
            raise fail(f"{field}.value", "the turn has no 'value'", 'give each turn its text in "value"')
        value = turn["value"]
        if not isinstance(value, str):
            raise fail(f"{field}.value", f"'value' is {_type_name(value)}", '"value" must be a string')
        content = _split_placeholders(value)
        n_placeholders += sum(1 for part in content if part["type"] == "image")
        turns.append(Turn(role=role, content=content))

    if not any(turn.role == "assistant" and turn.text().strip() for turn in turns):
        raise fail(
            "conversations",
            "the record has no assistant answer, so there is nothing to learn from",
            'add a "gpt" turn with the answer, or remove the record',
        )

    if n_placeholders == 0 and images:
        first_user = next((turn for turn in turns if turn.role == "user"), None)
        if first_user is None:
            raise fail(
                "conversations",
                f"the record has {len(images)} image(s) but no user turn to attach them to",
                'add a "human" turn, or put <image> placeholders where the images belong',
            )
        first_user.content[:0] = [{"type": "image"} for _ in images]
    elif n_placeholders != len(images):
        if not images:
            raise fail(
                "conversations",
                f"the conversation has {n_placeholders} <image> placeholder(s) but the record has no image",
                'add the image path(s) in "image", or remove the <image> placeholder(s)',
            )
        raise fail(
            "conversations",
            f"the conversation has {n_placeholders} <image> placeholder(s) but 'image' lists {len(images)}",
            "give one <image> placeholder per image, in the order of the 'image' list",
        )

    return Record(index=index, record_id=record_id, turns=turns, images=images, raw=raw)


def _conversation_list(raw: dict, fail: Any) -> list[Any]:
    """The record's `conversations`, checked to be a non-empty list."""
    if "conversations" not in raw:
        fields = ", ".join(repr(key) for key in raw) or "none"
        raise fail(
            "conversations",
            f"the record has no 'conversations' (its fields: {fields})",
            _RECORD_HINT,
        )
    conversations = raw["conversations"]
    if not isinstance(conversations, list):
        raise fail("conversations", f"'conversations' is {_type_name(conversations)}, not a list", _RECORD_HINT)
    if not conversations:
        raise fail("conversations", "'conversations' is empty", _RECORD_HINT)
    return conversations


def _parse_images(raw: dict, fail: Any) -> list[str]:
    """The record's image paths as written: `image` may be absent/null, a string or a list of strings."""
    value = raw.get("image")
    hint = '"image" must be a non-empty path string or a list of them (or leave it out for a text-only record)'
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            raise fail("image", "'image' is an empty string", hint)
        return [value]
    if isinstance(value, list):
        for position, item in enumerate(value):
            if not isinstance(item, str):
                raise fail("image", f"'image' item {position} is {_type_name(item)}, not a string", hint)
            if not item.strip():
                raise fail("image", f"'image' item {position} is an empty string", hint)
        return list(value)
    raise fail("image", f"'image' is {_type_name(value)}", hint)


def _split_placeholders(value: str) -> list[dict[str, Any]]:
    """Turn a LLaVA turn value into chat-template content parts.

    "<image>\\nWhat?" -> [image, text "What?"]; "What?\\n<image>" -> [text "What?", image]. Only the one line
    break touching a placeholder is dropped; all other text is kept as written.
    """
    if IMAGE_PLACEHOLDER not in value:
        return [{"type": "text", "text": value}]
    pieces = value.split(IMAGE_PLACEHOLDER)
    content: list[dict[str, Any]] = []
    last = len(pieces) - 1
    for position, piece in enumerate(pieces):
        if position > 0:
            content.append({"type": "image"})
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


def write_subset(dataset: Dataset, counts: Sequence[int], out_dir: Path) -> Path:
    """Write the selected records, unchanged, in the input's own format.

    Records keep input order; a record selected more than once (oversampling) is repeated consecutively.
    JSON input gives `out_dir/subset.json` (indent 2, non-ASCII kept); JSONL input gives `out_dir/subset.jsonl`
    made of the original line texts, so selected lines are byte-identical to the input's. The file is written
    under a temporary name and moved into place, so a crash never leaves a partial subset that looks finished.

    Args:
        dataset: the loaded input.
        counts: `counts[i]` is how many times record i appears in the subset (0 leaves it out).
        out_dir: the directory to write into (created if needed).

    Returns:
        The path of the written subset file.

    Raises:
        ValueError: `counts` does not have one non-negative integer per record.
        TiveError: the subset would overwrite the input file.
    """
    n_records = len(dataset.records)
    if len(counts) != n_records:
        raise ValueError(f"counts has {len(counts)} entries but the dataset has {n_records} records")
    repeats: list[int] = []
    for index, count in enumerate(counts):
        try:
            if isinstance(count, bool):
                raise TypeError
            value = operator.index(count)  # accepts numpy integers too
        except TypeError:
            raise ValueError(f"counts[{index}] is {count!r}, not an integer") from None
        if value < 0:
            raise ValueError(f"counts[{index}] is {value}, must be >= 0")
        repeats.append(value)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / ("subset.jsonl" if dataset.format == "jsonl" else "subset.json")
    if out_path.resolve() == Path(dataset.path).resolve():
        raise TiveError(f"{out_path}: the subset would overwrite the input file; choose another output directory")

    if dataset.format == "jsonl":
        lines = dataset.raw_lines
        if lines is None:
            lines = [json.dumps(record.raw, ensure_ascii=False) for record in dataset.records]
        text = "".join(line + "\n" for line, count in zip(lines, repeats) for _ in range(count))
    else:
        selected = [record.raw for record, count in zip(dataset.records, repeats) for _ in range(count)]
        text = json.dumps(selected, ensure_ascii=False, indent=2) + "\n"

    _write_atomically(out_path, text)
    return out_path


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then move it into place."""
    # os.open with mode 0o666 lets the umask decide the permissions, as a plain open() would
    # (tempfile's files are always 0600).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
