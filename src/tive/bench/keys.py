"""Content keys of the bench's inputs, for its caches (base model, encoded records, selection signals, runs).

A cache is reused only when everything its content depends on is the same, so each key is made of the inputs'
content, not their paths: each record's turns and the SHA-256 of each of its images' bytes (files and embedded
images alike), plus what the caller adds (task, metric, settings). A benchmark renamed, edited or swapped for
another, another task field, or an image rewritten in place all give new keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tive.data.records import Record
from tive.io import sha256_json

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time within the process)."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def image_digests(record: Record) -> list[str]:
    """SHA-256 of each image of the record, in order (a file's bytes, or an embedded image's bytes)."""
    out = []
    for position in range(len(record.images)):
        embedded = record.embedded_image(position)
        if embedded is not None:
            out.append(hashlib.sha256(embedded.read()).hexdigest())
        elif position < len(record.image_paths) and record.image_paths[position] is not None:
            out.append(file_digest(record.image_paths[position]))
        else:  # not resolved (the image check did not run): the path as written
            out.append("unresolved:" + record.images[position])
    return out


def record_content(record: Record, *, task: bool = False, metric: bool = False) -> list[Any]:
    """What a record contributes to a key: its turns (role and content parts), image digests, task / metric."""
    content: list[Any] = [[[turn.role, turn.content] for turn in record.turns], image_digests(record)]
    if task:
        content.append(record.task)
    if metric:
        content.append(record.raw.get("metric", "exact"))
        if "options" in record.raw:
            content.append(record.raw["options"])
    return content


def records_key(records: list[Record], *, task: bool = False, metric: bool = False) -> str:
    """One key for a list of records, in order."""
    return sha256_json([record_content(r, task=task, metric=metric) for r in records])


def benchmarks_key(benchmarks: list[Any]) -> str:
    """One key for the benchmarks: each one's name and records (with their metrics), in order."""
    return sha256_json([[b.name, records_key(b.records, metric=True)] for b in benchmarks])
