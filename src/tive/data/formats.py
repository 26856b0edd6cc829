"""Reading instruction datasets into `Record`s and writing a selected subset back in the input's own format.

Containers, told apart by content and path rather than by suffix alone (files are often misnamed):

- JSON: a top-level list of record objects (the first non-space character is `[`);
- JSONL: one record object per line; blank lines are allowed and do not count as records;
- Parquet: a file starting with the `PAR1` magic bytes, one record per row (`tive.data.arrow`);
- a Hugging Face `datasets` directory written by `Dataset.save_to_disk` (it holds `state.json` /
  `dataset_info.json`), one record per row (`tive.data.arrow`).

Each record may have any shape `tive.data.shapes` knows (LLaVA `conversations`, LLaMA-Factory/ShareGPT
`messages` + `images`, OpenAI-style content parts, `instruction`/`output`), decided per record. The record is
normalised into `Turn`s whose image placeholders become `{"type": "image"}` parts, so the model side never has
to know the file format. The writer only uses what was read: JSON records are the original objects, JSONL lines
byte-identical, Parquet rows taken from the input table (same schema), `datasets` rows selected from the input
dataset and saved with `save_to_disk`.

The input is only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Sequence

from tive.data import arrow
from tive.data.records import Record
from tive.data.shapes import (
    IMAGE_PLACEHOLDER,
    parse_instruction_record,
    parse_llava_record,
    parse_messages_record,
    parse_record,
)
from tive.data.shapes import type_name as _type_name
from tive.errors import DataError, TiveError

FORMAT_JSON = "json"
FORMAT_JSONL = "jsonl"
FORMAT_PARQUET = arrow.FORMAT_PARQUET
FORMAT_HF_DATASET = arrow.FORMAT_HF_DATASET
FORMATS = (FORMAT_JSON, FORMAT_JSONL, FORMAT_PARQUET, FORMAT_HF_DATASET)

# The subset's name per input format (a directory for `datasets`).
SUBSET_NAMES = {
    FORMAT_JSON: "subset.json",
    FORMAT_JSONL: "subset.jsonl",
    FORMAT_PARQUET: "subset.parquet",
    FORMAT_HF_DATASET: "subset",
}

__all__ = [
    "Dataset",
    "FORMATS",
    "IMAGE_PLACEHOLDER",
    "SUBSET_NAMES",
    "dataset_sha256",
    "load_dataset",
    "read_records",
    "parse_instruction_record",
    "parse_llava_record",
    "parse_messages_record",
    "parse_record",
    "write_subset",
    "write_subset_from_input",
]


@dataclass
class Dataset:
    """An input, loaded.

    Attributes:
        path: the file (or, for `datasets`, the directory) it was read from.
        format: "json" (a top-level list), "jsonl" (one object per line), "parquet", or "hf_dataset" (a
            `save_to_disk` directory).
        records: one `Record` per input record, in input order (`records[i].index == i`).
        raw_lines: for JSONL, each record's original line text (without its line ending), so that a subset can
            be written back byte-identical; None otherwise.
        source: what the records were read from, kept to write the subset in kind and to read embedded images:
            the pyarrow Table (Parquet) or the `datasets.Dataset` (hf_dataset); None for JSON and JSONL.
    """

    path: Path
    format: str
    records: list[Record]
    raw_lines: list[str] | None
    source: Any = None

    def record_shapes(self) -> dict[str, int]:
        """How many records were read as each shape ("llava", "sharegpt", "openai", "instruction")."""
        return dict(sorted(Counter(str(record.shape) for record in self.records).items()))


def load_dataset(path: Path | str) -> Dataset:
    """Read and validate an instruction dataset: JSON, JSONL, Parquet or a `datasets` save_to_disk directory.

    The container is detected from the path and content: a directory holding `state.json` or
    `dataset_info.json` is a `save_to_disk` directory; a file starting with Parquet's magic bytes is Parquet;
    otherwise the text's first non-space character tells a JSON list (`[`) from JSON lines (`{`), because
    instruction files are often named `.json` while holding JSON lines or the other way round. Each record is
    parsed by its own shape (`tive.data.shapes`) and validated up front, so that a bad record is reported before
    any expensive stage starts.

    Args:
        path: the dataset file or directory.

    Returns:
        The loaded dataset.

    Raises:
        TiveError: the input is missing, unreadable, not UTF-8, not valid JSON (with line and column), not
            readable Parquet, empty, or its top level is not a list; a directory that is not a save_to_disk
            directory; pyarrow or datasets missing for those formats.
        DataError: a JSONL line is not valid JSON, or a record is not a valid record of a supported shape.
    """
    path = Path(path)
    if path.is_dir():
        if arrow.is_hf_dataset_dir(path) or (path / arrow.HF_DATASET_DICT_MARKER).is_file():
            records, source = arrow.read_hf_dataset(path)
            return _loaded(path, FORMAT_HF_DATASET, records, None, source)
        raise TiveError(
            f"{path}: is a directory, not a dataset file (give the .json, .jsonl or .parquet file, or a directory "
            "written by datasets' save_to_disk)"
        )
    if arrow.is_parquet_file(path):
        records, source = arrow.read_parquet(path)
        return _loaded(path, FORMAT_PARQUET, records, None, source)

    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise TiveError(f"{path}: the file is empty (expected a JSON list of records or JSON lines)")

    if stripped[0] != "{":
        # "[" is a JSON list; anything else that is not an object cannot be JSON lines of records either, so
        # parse it as one document to report "not valid JSON at line/column" or "top level is not a list".
        fmt = FORMAT_JSON
        raw_records = _parse_json_list(path, text)
        raw_lines = None
    else:
        fmt = FORMAT_JSONL
        raw_records, raw_lines = _parse_jsonl(path, text)

    records = [parse_record(raw, index, path) for index, raw in enumerate(raw_records)]
    return _loaded(path, fmt, records, raw_lines, None)


def _loaded(path: Path, fmt: str, records: list[Record], raw_lines: list[str] | None, source: Any) -> Dataset:
    if not records:
        raise TiveError(f"{path}: the {'directory' if fmt == FORMAT_HF_DATASET else 'file'} holds no records")
    return Dataset(path=path, format=fmt, records=records, raw_lines=raw_lines, source=source)


def dataset_sha256(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of an input: a file's bytes, or for a directory every file's relative path and bytes.

    Used to notice that the input changed between stages; a `datasets` directory is a directory, so hashing
    only files would not do.
    """
    path = Path(path)

    def file_digest(file: Path) -> bytes:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
        return digest.digest()

    if not path.is_dir():
        return file_digest(path).hex()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        digest.update(file_digest(file))
    return digest.hexdigest()


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
    except RecursionError:
        raise _too_deep(path, _deepest_element(text)) from None
    if not isinstance(value, list):
        raise TiveError(f"{path}: the top level is {_type_name(value)}, not a list of records")
    return value


def _parse_jsonl(path: Path, text: str) -> tuple[list[Any], list[str]]:
    """Parse JSON lines; returns the objects and each one's original line text."""
    records: list[Any] = []
    lines: list[str] = []
    for lineno, line in _record_lines(text):
        index = len(records)
        try:
            value = json.loads(line)
        except RecursionError:
            raise DataError(path, index, None, None, f"line {lineno} is nested too deeply to be read",
                            _TOO_DEEP_HINT) from None
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


_TOO_DEEP_HINT = ("an instruction record needs a few levels of nesting; this one holds a runaway structure: fix or "
                  "remove it")


def _too_deep(path: Path, element: int | None) -> TiveError:
    if element is None:
        return TiveError(f"{path}: nested too deeply to be read ({_TOO_DEEP_HINT})")
    return DataError(path, element, None, None, "nested too deeply to be read", _TOO_DEEP_HINT)


def _deepest_element(text: str) -> int | None:
    """The position in the top-level list of the element whose nesting exceeds the parser's limit, found by
    decoding the elements one at a time; None when the list itself cannot be walked."""
    read = 0
    try:
        for _ in _json_list_elements(text):
            read += 1
    except RecursionError:
        return read
    except (ValueError, IndexError):
        return None
    return None


def _record_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line of JSON lines text: one per record, in order."""
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which may legally
    # appear unescaped inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip():
            yield lineno, line


def _json_list_elements(text: str) -> Iterator[Any]:
    """The elements of a JSON list, decoded one at a time (so that only the wanted ones need be kept)."""
    for value, _, _ in _json_list_items(text):
        yield value


def _json_list_elements_positions(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) character positions in `text` of each element of a JSON list, decoded one at a time and not
    kept (for the record index of `tive.data.lazy`)."""
    for _, start, end in _json_list_items(text):
        yield start, end


def _json_list_items(text: str) -> Iterator[tuple[Any, int, int]]:
    """(element, start, end) of each element of a JSON list, in order, decoded one at a time."""
    decoder = json.JSONDecoder()
    whitespace = " \t\n\r"
    position = len(text) - len(text.lstrip(whitespace)) + 1  # past "["
    while True:
        while text[position] in whitespace:
            position += 1
        if text[position] == "]":
            return
        start = position
        value, position = decoder.raw_decode(text, position)
        yield value, start, position
        while text[position] in whitespace:
            position += 1
        if text[position] == ",":
            position += 1


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


def write_subset(dataset: Dataset, counts: Sequence[int], out_dir: Path) -> Path:
    """Write the selected records, unchanged, in the input's own format.

    Records keep input order; a record selected more than once (oversampling) is repeated consecutively.
    JSON input gives `out_dir/subset.json` (indent 2, non-ASCII kept); JSONL input gives `out_dir/subset.jsonl`
    made of the original line texts, so selected lines are byte-identical to the input's; Parquet input gives
    `out_dir/subset.parquet` with the input's schema and the selected rows; a `datasets` directory gives
    `out_dir/subset/`, saved with `save_to_disk`. Everything is written under a temporary name and moved into
    place, so a crash never leaves a partial subset that looks finished.

    Args:
        dataset: the loaded input.
        counts: `counts[i]` is how many times record i appears in the subset (0 leaves it out).
        out_dir: the directory to write into (created if needed).

    Returns:
        The path of the written subset file (or directory).

    Raises:
        ValueError: `counts` does not have one non-negative integer per record.
        TiveError: the subset would overwrite the input.
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

    if dataset.format in (FORMAT_PARQUET, FORMAT_HF_DATASET) and dataset.source is None:
        raise ValueError(f"a {dataset.format} dataset needs its source table to write a subset")
    lines = dataset.raw_lines
    if dataset.format == FORMAT_JSONL and lines is None:
        lines = [json.dumps(record.raw, ensure_ascii=False) for record in dataset.records]
    return _write_selected(dataset.path, dataset.format, repeats, out_dir, lines=lines,
                           objects=[record.raw for record in dataset.records], source=dataset.source)


def write_subset_from_input(path: Path | str, fmt: str, counts: Sequence[int], out_dir: Path,
                            name: str | None = None) -> Path:
    """Write the subset straight from the input, without parsing its records into `Record`s.

    `name` is the output's name without its suffix (default `subset`; `tive baseline` writes `random` etc.): the
    suffix, or a directory for `datasets`, follows the input's format as for the subset.

    For `tive select` on a prepared run: the records were validated at prepare time (and the input's SHA-256 is
    checked by the caller), so the JSONL lines are copied, a JSON list's elements are decoded one at a time and only
    the selected ones kept, and Parquet / `datasets` rows are taken from the table. The output is the same as
    `write_subset`'s on the loaded dataset.
    """
    path = Path(path)
    repeats = [int(count) for count in counts]
    if fmt == FORMAT_JSONL:
        lines = [line for _, line in _record_lines(_read_text(path))]
        return _write_selected(path, fmt, _fit(repeats, len(lines), path), out_dir, lines=lines, name=name)
    if fmt == FORMAT_JSON:
        wanted = {index: count for index, count in enumerate(repeats) if count}
        kept, n = {}, 0
        for n, value in enumerate(_json_list_elements(_read_text(path)), start=1):
            if n - 1 in wanted:
                kept[n - 1] = value
        _fit(repeats, n, path)
        objects = [kept.get(index) for index in range(n)]
        return _write_selected(path, fmt, repeats, out_dir, objects=objects, name=name)
    if fmt == FORMAT_PARQUET:
        source = arrow.open_parquet(path)
        return _write_selected(path, fmt, _fit(repeats, source.num_rows, path), out_dir, source=source, name=name)
    if fmt == FORMAT_HF_DATASET:
        source = arrow.open_hf_dataset(path)
        return _write_selected(path, fmt, _fit(repeats, len(source), path), out_dir, source=source, name=name)
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_records(path: Path | str, fmt: str, indices: Sequence[int]) -> dict[int, Record]:
    """Parse only the records at `indices` of a prepared input (for the report's examples).

    JSON lines and JSON lists are walked one element at a time and only the wanted ones parsed; Parquet and
    `datasets` rows are taken from the table. The records were validated at prepare time; the caller checks that
    the input is unchanged (its SHA-256).
    """
    path = Path(path)
    wanted = set(int(index) for index in indices)
    if fmt in (FORMAT_PARQUET, FORMAT_HF_DATASET):
        table = arrow.open_parquet(path) if fmt == FORMAT_PARQUET else arrow.open_hf_dataset(path).data.table
        return arrow.records_at(table, sorted(wanted), path)
    if fmt == FORMAT_JSONL:
        raw = (json.loads(line) for _, line in _record_lines(_read_text(path)))
    elif fmt == FORMAT_JSON:
        raw = _json_list_elements(_read_text(path))
    else:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    found: dict[int, Record] = {}
    for index, value in enumerate(raw):
        if index in wanted:
            found[index] = parse_record(value, index, path)
            if len(found) == len(wanted):
                break
    return found


def _fit(repeats: list[int], n_records: int, path: Path) -> list[int]:
    if len(repeats) != n_records:
        raise TiveError(f"{path}: holds {n_records} records, the selection has {len(repeats)}; prepare again")
    return repeats


def _write_selected(path: Path, fmt: str, repeats: list[int], out_dir: Path, *, lines: list[str] | None = None,
                    objects: list[Any] | None = None, source: Any = None, name: str | None = None) -> Path:
    """Write the records `repeats` selects, in kind: JSONL `lines`, JSON `objects`, or rows of `source`; named
    `name` + the subset's suffix when `name` is given."""
    if fmt not in SUBSET_NAMES:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_name = SUBSET_NAMES[fmt] if name is None else name + SUBSET_NAMES[fmt][len("subset"):]
    out_path = out_dir / out_name
    input_path = Path(path).resolve()
    if out_path.resolve() == input_path or input_path.is_relative_to(out_path.resolve()):
        raise TiveError(f"{out_path}: the subset would overwrite the input; choose another output directory")
    if fmt in (FORMAT_PARQUET, FORMAT_HF_DATASET):
        indices = [index for index, count in enumerate(repeats) for _ in range(count)]
        if fmt == FORMAT_PARQUET:
            arrow.write_parquet_subset(source, indices, out_path)
        else:
            arrow.write_hf_subset(source, indices, out_path)
        return out_path
    if fmt == FORMAT_JSONL:
        assert lines is not None
        text = "".join(line + "\n" for line, count in zip(lines, repeats) for _ in range(count))
    else:
        assert objects is not None
        selected = [obj for obj, count in zip(objects, repeats) for _ in range(count)]
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
