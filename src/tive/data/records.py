"""The record model shared by every stage: one instruction record, normalised for the model side.

A `Record` keeps the original object (`raw`) untouched next to a normalised view (`turns`, `images`) that the
model code turns into tokens. Writers only ever use `raw` (or, for Parquet and `datasets` input, the row it came
from), so a selected subset is the input's own records.

An image is either a file (a path as written, resolved under the image root by the image check into
`image_paths`) or embedded in the dataset itself (`image_data`): the bytes of a Hugging Face `Image` column in
Parquet or a `save_to_disk` directory, or a `data:` URL. The model side opens both the same way with
`tive.data.images.open_images(record)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

Role = Literal["system", "user", "assistant"]

STATUS_OK = "ok"

# The record shapes the readers recognise (`Record.shape`).
SHAPE_LLAVA = "llava"  # "conversations": [{"from", "value"}]
SHAPE_SHAREGPT = "sharegpt"  # "messages": [{"role", "content": "text with <image>"}] + "images"
SHAPE_OPENAI = "openai"  # "messages": [{"role", "content": [{"type": "text" | "image_url" | "image", ...}]}]
SHAPE_INSTRUCTION = "instruction"  # "instruction" (+ "input") and "output"


@dataclass
class Turn:
    """One message of a conversation.

    `content` uses the Hugging Face chat-template convention: a list of parts, each either
    `{"type": "text", "text": ...}` or `{"type": "image"}` (the n-th image part refers to the record's n-th image).
    """

    role: Role
    content: list[dict[str, Any]]

    def text(self) -> str:
        """The message's text parts joined, without image placeholders."""
        return "".join(part["text"] for part in self.content if part["type"] == "text")


@dataclass(frozen=True, eq=False)
class EmbeddedImage:
    """An image stored in the dataset itself rather than as a file.

    Its encoded bytes (PNG, JPEG, WebP, ...: anything Pillow reads) are either held (`data:` URLs) or read on
    demand from the Arrow table the record came from, so that a memory-mapped `datasets` directory is not copied
    into memory when it is loaded. Compared by identity.

    Attributes:
        name: the stored file name (the `path` of a `datasets` Image value) or a short description; for messages
            and task rules only, never opened.
        source: the bytes, or a function without arguments that returns them.
    """

    name: str | None
    source: bytes | Callable[[], bytes]

    def read(self) -> bytes:
        """The image's encoded bytes."""
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            return bytes(self.source)
        return self.source()

    def __repr__(self) -> str:
        kind = f"{len(self.source)} bytes" if isinstance(self.source, (bytes, bytearray)) else "lazy"
        return f"EmbeddedImage(name={self.name!r}, {kind})"


@dataclass
class Record:
    """One instruction record of the input.

    Attributes:
        index: position in the input (0-based; blank lines of JSONL do not count; the row of a table).
        record_id: the record's own `id` value as written (any JSON scalar), or None when it has none.
        turns: the normalised conversation; at least one assistant turn.
        images: the images in order of use, as written in the record: a path, a URL, or for an embedded image
            its stored name (or "<embedded image>"). Task rules match against these.
        raw: the original parsed object; never modified. For Parquet and `datasets` rows, the row as Python
            values with each embedded image's bytes left in the table (the value is an `EmbeddedImage`).
        task: the task (source dataset) the record belongs to, set by task assignment.
        image_paths: set by the image check (or `resolve_image_paths`) on ok records: one entry per image,
            aligned with `images`: the resolved file, or None for an embedded image.
        status: "ok", or "skipped: <reason>" for a record left out of the computation.
        image_data: aligned with `images` when the record has an embedded image: the `EmbeddedImage`, or None for
            a file image; empty when every image is a file.
        image_fields: aligned with `images`: the field each image came from (e.g. "image", "images",
            "messages[0].content[1].image_url"), for error messages; may be empty (then "image").
        shape: which record shape it was read as (`SHAPE_*`), or None when built by hand.
    """

    index: int
    record_id: Any
    turns: list[Turn]
    images: list[str]
    raw: dict[str, Any]
    task: str | None = None
    image_paths: list[Path | None] = field(default_factory=list)
    status: str = STATUS_OK
    image_data: list[EmbeddedImage | None] = field(default_factory=list)
    image_fields: list[str] = field(default_factory=list)
    shape: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def first_instruction(self) -> str:
        """Text of the first user turn (image placeholders removed), used by task rules."""
        for turn in self.turns:
            if turn.role == "user":
                return turn.text()
        return ""

    def embedded_image(self, position: int) -> EmbeddedImage | None:
        """The embedded image at `position` of `images`, or None when that image is a file (or a URL)."""
        if not self.image_data:
            return None
        return self.image_data[position]

    def image_field(self, position: int) -> str:
        """The field the image at `position` came from, for messages."""
        if position < len(self.image_fields):
            return self.image_fields[position]
        return "image"
