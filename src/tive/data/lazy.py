"""Records read on demand from a prepared input, so that a rank's memory does not grow with the dataset.

Prepare validated every record once; the later stages (warm-up, features, estimate, retry) each need only some of
them (a sample, a chunk). They get a `LazyRecords`: a `Sequence[Record]` that seeks to one record and parses it
when it is indexed, and keeps nothing. What it needs per record is a compact index:

- JSON lines and a JSON list: each record's byte offset and length in the file (`build_record_index`, written by
  prepare as `records_index.npz`, built again by a later stage for a run prepared before it existed);
- Parquet and `datasets`: the row number (no index needed; the table is opened once, `datasets` memory-mapped).

The task and status of each record come from the manifest, as small integer codes; file images resolve under the
image root exactly as `resolve_image_paths` resolves them. A `LazyRecords` pickles as its path and index arrays,
so DataLoader workers reopen the file themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, overload

import numpy as np

from tive.data import arrow
from tive.data.records import STATUS_OK, Record
from tive.data.shapes import parse_record
from tive.errors import TiveError

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def build_record_index(path: Path, fmt: str) -> np.ndarray:
    """Per record of a JSON list or JSON lines file: (byte offset, byte length), shape (N, 2), int64.

    JSON lines are streamed (memory flat); a JSON list is walked element by element over its text (its text is held
    while walking: prepare holds it anyway). Blank lines do not count, as in `load_dataset`.
    """
    from tive.data.formats import FORMAT_JSON, FORMAT_JSONL, _json_list_elements_positions, _read_text

    path = Path(path)
    spans: list[tuple[int, int]] = []
    if fmt == FORMAT_JSONL:
        offset = 0
        with open(path, "rb") as handle:
            for line in handle:  # splits on b"\n" only, as `_record_lines` splits the text on "\n"
                start, body = offset, line
                offset += len(line)
                if start == 0 and body.startswith(_BOM):
                    start, body = 3, body[3:]
                if body.endswith(b"\n"):
                    body = body[:-1]
                if body.endswith(b"\r"):
                    body = body[:-1]
                if body.decode("utf-8").strip():
                    spans.append((start, len(body)))
    elif fmt == FORMAT_JSON:
        text = _read_text(path)
        with open(path, "rb") as handle:
            bom = 3 if handle.read(3) == _BOM else 0
        ascii_only = text.isascii()
        previous_char, previous_byte = 0, bom
        for start, end in _json_list_elements_positions(text):
            if ascii_only:
                byte_start, byte_end = bom + start, bom + end
            else:
                byte_start = previous_byte + len(text[previous_char:start].encode("utf-8"))
                byte_end = byte_start + len(text[start:end].encode("utf-8"))
                previous_char, previous_byte = end, byte_end
            spans.append((byte_start, byte_end - byte_start))
    else:
        raise ValueError(f"a record index is for JSON and JSON lines input, not {fmt!r}")
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


class _Source:
    """What every view of one prepared input shares: the file, its index, the tasks and statuses, the image root."""

    def __init__(self, path: Path, fmt: str, spans: np.ndarray | None, n_records: int, task_codes: np.ndarray,
                 task_names: list[str], ok: np.ndarray, image_root: str | None) -> None:
        self.path, self.format, self.spans, self.n_records = Path(path), fmt, spans, n_records
        self.task_codes, self.task_names, self.ok, self.image_root = task_codes, task_names, ok, image_root
        self._handle: Any = None
        self._table: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = state["_table"] = None  # reopened by whoever unpickles it (a DataLoader worker)
        return state

    def record(self, index: int, status: str) -> Record:
        """Record `index`, parsed now, with its task, status and (for an ok record) resolved image paths."""
        from tive.data.formats import FORMAT_HF_DATASET, FORMAT_PARQUET, Dataset
        from tive.data.images import resolve_image_paths

        if self.format in (FORMAT_PARQUET, FORMAT_HF_DATASET):
            if self._table is None:
                self._table = (arrow.open_parquet(self.path) if self.format == FORMAT_PARQUET
                               else arrow.open_hf_dataset(self.path).data.table)
            record = arrow.records_at(self._table, [index], self.path)[index]
        else:
            assert self.spans is not None
            if self._handle is None:
                self._handle = open(self.path, "rb")
            offset, length = (int(value) for value in self.spans[index])
            self._handle.seek(offset)
            try:
                raw = json.loads(self._handle.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise TiveError(f"{self.path}: record {index} cannot be read at byte {offset} ({error}); the input "
                                "or its index (records_index.npz in the run directory) changed since prepare; "
                                "prepare again into a new run directory") from None
            record = parse_record(raw, index, self.path)
        record.task = self.task_names[int(self.task_codes[index])]
        record.status = status
        if record.ok and record.images:
            resolve_image_paths(Dataset(self.path, self.format, [record], None), self.image_root)
        return record


class LazyRecords(Sequence[Record]):
    """Records of a prepared input (all, or those at `indices`), each parsed when indexed and not kept.

    `records[k]` is a new `Record` every time; `records.take(positions)` is a view of some of them (no parsing).
    """

    def __init__(self, source: _Source, indices: np.ndarray | None = None) -> None:
        self._source = source
        self._indices = indices

    @property
    def path(self) -> Path:
        return self._source.path

    def index_at(self, k: int) -> int:
        """The input index of the k-th record of this view, without parsing it."""
        return int(self._indices[k]) if self._indices is not None else int(range(self._source.n_records)[k])

    def __len__(self) -> int:
        return len(self._indices) if self._indices is not None else self._source.n_records

    @overload
    def __getitem__(self, k: int) -> Record: ...

    @overload
    def __getitem__(self, k: slice) -> LazyRecords: ...

    def __getitem__(self, k: int | slice) -> Record | LazyRecords:
        if isinstance(k, slice):
            return self.take(range(len(self))[k])
        index = self.index_at(k)
        # A record prepare skipped is never a stage's candidate; its reason is in the manifest.
        return self._source.record(index, STATUS_OK if self._source.ok[index] else "skipped")

    def __iter__(self) -> Iterator[Record]:
        for k in range(len(self)):
            yield self[k]

    def take(self, positions: Sequence[int]) -> LazyRecords:
        """The records at `positions` of this view, as a view (nothing parsed)."""
        chosen = np.asarray([self.index_at(int(p)) for p in positions], dtype=np.int64)
        return LazyRecords(self._source, chosen)

    def tasks(self) -> list[str]:
        """Each record's task, without parsing any record."""
        return [self._source.task_names[int(self._source.task_codes[self.index_at(k)])] for k in range(len(self))]


def lazy_records(path: Path, fmt: str, spans: np.ndarray | None, rows: Sequence[dict[str, Any]],
                 image_root: str | None, is_ok: Callable[[str], bool]) -> LazyRecords:
    """A `LazyRecords` over every record of a prepared input, its tasks and statuses taken from the manifest `rows`
    (a row whose status `is_ok` is read as ok: the stages' candidates)."""
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(row["task"], len(names)) for row in rows), dtype=np.int32,
                        count=len(rows))
    ok = np.fromiter((is_ok(row["status"]) for row in rows), dtype=bool, count=len(rows))
    if spans is not None and len(spans) != len(rows):
        raise TiveError(f"{path}: the record index has {len(spans)} records but the manifest {len(rows)}; "
                        "prepare again into a new run directory")
    source = _Source(path, fmt, spans, len(rows), codes, list(names), ok, image_root)
    return LazyRecords(source)
