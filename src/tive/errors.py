"""Errors a user can cause. The CLI prints their message, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TiveError(Exception):
    """An error caused by input, options or the state of a run directory."""


class DataError(TiveError):
    """A problem with one record of an input file.

    The message names the file, the record (index and id), the field, what is wrong and what to do.
    """

    def __init__(
        self,
        path: Path | str,
        index: int | None,
        record_id: Any,
        field: str | None,
        problem: str,
        hint: str = "",
    ) -> None:
        self.path = str(path)
        self.index = index
        self.record_id = record_id
        self.field = field
        self.problem = problem
        self.hint = hint
        where = [self.path]
        if index is not None:
            where.append(f"record {index}")
            if record_id is not None:
                where.append(f"id {record_id!r}")
        if field:
            where.append(f"field {field!r}")
        message = f"{', '.join(where)}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
