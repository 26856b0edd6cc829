"""Reading and writing Arrow-backed datasets: Parquet files and Hugging Face `datasets` `save_to_disk` directories.

Each row is one record, of any shape `tive.data.shapes` knows (the conversation columns may be `conversations`,
`messages`, or `instruction`/`output`). Images may be path strings (resolved under the image root like any
other file image) or embedded bytes, as the `datasets` `Image` feature stores them: a struct
`{"bytes": binary, "path": string}`, alone or in a list, anywhere in the row (an `image`/`images` column, or an
`image` key of a content part). Embedded bytes are not copied into the records: each becomes an
`EmbeddedImage` that reads its bytes from the table when the model side opens it. A `save_to_disk` directory is
memory-mapped, so its images never have to fit in memory; a Parquet file is decoded into memory once (convert a
very large one with `datasets` and `save_to_disk` first).

The subset is written in kind: Parquet -> `subset.parquet` with the same schema (including its `huggingface`
metadata) and the selected rows, repeated when selected more than once; a `save_to_disk` directory -> a
`subset/` directory saved with `save_to_disk`. pyarrow and datasets are imported only here, inside functions.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from tive.data.records import EmbeddedImage, Record
from tive.data.shapes import parse_record
from tive.errors import TiveError

FORMAT_PARQUET = "parquet"
FORMAT_HF_DATASET = "hf_dataset"

PARQUET_MAGIC = b"PAR1"
# Files `Dataset.save_to_disk` writes next to its .arrow shards; either one marks such a directory.
HF_DATASET_MARKERS = ("state.json", "dataset_info.json")
HF_DATASET_DICT_MARKER = "dataset_dict.json"

_BATCH_ROWS = 1000


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise TiveError("reading Parquet needs the 'pyarrow' package: pip install pyarrow") from None
    return pyarrow


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise TiveError("reading a save_to_disk directory needs the 'datasets' package: pip install datasets") from None
    return datasets


def is_parquet_file(path: Path) -> bool:
    """Whether the file starts with Parquet's magic bytes (whatever its name says)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def is_hf_dataset_dir(path: Path) -> bool:
    """Whether `path` is a directory written by `datasets.Dataset.save_to_disk`."""
    return path.is_dir() and any((path / marker).is_file() for marker in HF_DATASET_MARKERS)


def read_parquet(path: Path) -> tuple[list[Record], Any]:
    """Read a Parquet file into records; returns them and the pyarrow Table (kept to write the subset).

    Raises:
        TiveError: pyarrow is missing or the file is not readable Parquet.
        DataError: a row is not a valid record.
    """
    table = open_parquet(path)
    return _records_from_table(table, path), table


def open_parquet(path: Path) -> Any:
    """The Parquet file's pyarrow Table (no record is parsed)."""
    _import_pyarrow()
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise TiveError(f"{path}: cannot read the Parquet file: {err}") from None


def read_hf_dataset(path: Path) -> tuple[list[Record], Any]:
    """Read a `save_to_disk` directory into records; returns them and the `datasets.Dataset` (memory-mapped).

    Raises:
        TiveError: datasets is missing, the directory holds a DatasetDict (give one split) or cannot be loaded.
        DataError: a row is not a valid record.
    """
    dataset = open_hf_dataset(path)
    return _records_from_table(dataset.data.table, path), dataset


def open_hf_dataset(path: Path) -> Any:
    """The `save_to_disk` directory's `datasets.Dataset`, memory-mapped (no record is parsed)."""
    datasets = _import_datasets()
    if (path / HF_DATASET_DICT_MARKER).is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise TiveError(
            f"{path}: a DatasetDict with splits {', '.join(splits) or 'none'}; give one split's directory, "
            f"e.g. {path / (splits[0] if splits else 'train')}"
        )
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # FileNotFoundError, ValueError, ArrowInvalid, ...
        raise TiveError(f"{path}: cannot load the datasets directory (save_to_disk format): {err}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise TiveError(f"{path}: holds a {type(dataset).__name__}, not one Dataset; give one split's directory")
    if getattr(dataset, "_indices", None) is not None:
        # A saved selection without its indices flattened: flatten in memory, never into the input directory.
        dataset = dataset.flatten_indices(keep_in_memory=True)
    return dataset


def _records_from_table(table: Any, path: Path) -> list[Record]:
    """Parse every row of a pyarrow Table, embedded image bytes left in the table."""
    image_columns = _image_columns(table)
    records: list[Record] = []
    for start, rows in _row_batches(table):
        for offset, row in enumerate(rows):
            records.append(_row_record(table, start + offset, row, image_columns, path))
    return records


def records_at(table: Any, indices: list[int], path: Path) -> dict[int, Record]:
    """Parse the rows `indices` of a pyarrow Table (those in range), embedded image bytes left in the table."""
    image_columns = _image_columns(table)
    return {index: _row_record(table, index, table.slice(index, 1).to_pylist()[0], image_columns, path)
            for index in indices if 0 <= index < table.num_rows}


def _image_columns(table: Any) -> set[str]:
    return {field.name for field in table.schema if _holds_images(field.type)}


def _row_record(table: Any, index: int, row: dict[str, Any], image_columns: set[str], path: Path) -> Record:
    """Row `index` as a record, each embedded image reading its bytes from the table when opened."""
    if image_columns:
        row = {column: _embed(value, _Locator(table, index, (column,))) if column in image_columns else value
               for column, value in row.items()}
    return parse_record(row, index, path)


def _holds_images(arrow_type: Any) -> bool:
    """Whether an Arrow type is or contains the `datasets` Image struct {bytes: binary, path: string}."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
        if names == {"bytes", "path"}:
            return True
        return any(_holds_images(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return _holds_images(arrow_type.value_type)
    return False


def _row_batches(table: Any) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(first row index, rows as Python dicts) per batch, so that only one batch of image bytes is converted."""
    start = 0
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        rows = batch.to_pylist()
        yield start, rows
        start += len(rows)


class _Locator:
    """Where a value sits in a table (row, column and the keys/positions below it); reads its image bytes."""

    __slots__ = ("table", "row", "keys")

    def __init__(self, table: Any, row: int, keys: tuple[Any, ...]) -> None:
        self.table = table
        self.row = row
        self.keys = keys

    def child(self, key: Any) -> _Locator:
        return _Locator(self.table, self.row, self.keys + (key,))

    def __call__(self) -> bytes:
        scalar = self.table.column(self.keys[0])[self.row]
        for key in self.keys[1:]:
            scalar = scalar[key]
        return scalar["bytes"].as_py()


def _is_image_value(value: dict[str, Any]) -> bool:
    """A `datasets` Image value: exactly the keys bytes and path."""
    return (
        len(value) == 2
        and "bytes" in value
        and "path" in value
        and (value["bytes"] is None or isinstance(value["bytes"], (bytes, bytearray)))
        and (value["path"] is None or isinstance(value["path"], str))
    )


def _embed(value: Any, where: _Locator) -> Any:
    """Replace each Image value by an `EmbeddedImage` reading from the table (or its path when it has no bytes)."""
    if isinstance(value, dict):
        if _is_image_value(value):
            if value["bytes"] is not None:
                return EmbeddedImage(value["path"], where)
            return value["path"]  # an image stored as a file reference: resolved under the image root
        return {key: _embed(item, where.child(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_embed(item, where.child(position)) for position, item in enumerate(value)]
    return value


# --------------------------------------------------------------------------------------------------- writing
def write_parquet_subset(table: Any, indices: list[int], out_path: Path) -> None:
    """Write the rows `indices` (in that order, repeats allowed) of `table` to `out_path`, schema unchanged."""
    pa = _import_pyarrow()
    import pyarrow.parquet as pq

    subset = table.take(pa.array(indices, type=pa.int64()))
    tmp = out_path.parent / f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(subset, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_hf_subset(dataset: Any, indices: list[int], out_dir: Path) -> None:
    """Save the rows `indices` of a `datasets.Dataset` to `out_dir` with `save_to_disk`.

    Saved under a temporary name and then moved into place; an existing `out_dir` (an earlier subset) is replaced.
    """
    datasets = _import_datasets()
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    quiet = hasattr(datasets, "are_progress_bars_disabled") and not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        # An empty selection needs one explicit (empty) shard: with none, load_from_disk cannot read it back.
        dataset.select(indices).save_to_disk(str(tmp), **({} if indices else {"num_shards": 1}))
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex}.old"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if quiet:
            datasets.enable_progress_bars()
