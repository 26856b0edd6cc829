"""The record model shared by every stage: one instruction record, normalised for the model side.

A `Record` keeps the original object (`raw`) untouched next to a normalised view (`turns`, `images`) that the
model code turns into tokens. Writers only ever use `raw`, so a selected subset is the input's own records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]

STATUS_OK = "ok"


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


@dataclass
class Record:
    """One instruction record of the input.

    Attributes:
        index: position in the input file (0-based; blank lines of JSONL do not count).
        record_id: the record's own `id` value as written (any JSON scalar), or None when it has none.
        turns: the normalised conversation; at least one assistant turn.
        images: image paths as written in the record, in order of use.
        raw: the original parsed object; never modified.
        task: the task (source dataset) the record belongs to, set by task assignment.
        image_paths: `images` resolved under the image root, set by the image check.
        status: "ok", or "skipped: <reason>" for a record left out of the computation.
    """

    index: int
    record_id: Any
    turns: list[Turn]
    images: list[str]
    raw: dict[str, Any]
    task: str | None = None
    image_paths: list[Path] = field(default_factory=list)
    status: str = STATUS_OK

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def first_instruction(self) -> str:
        """Text of the first user turn (image placeholders removed), used by task rules."""
        for turn in self.turns:
            if turn.role == "user":
                return turn.text()
        return ""
