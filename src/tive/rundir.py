"""The run directory: where each stage finds its inputs and commits its outputs.

Layout (every file is written to a temporary name and moved into place; markers are written last):

    prepare.json              what prepare read: input path + SHA-256, format, image root, task options, counts
    manifest.jsonl            one line per input record: index, id, task, status, grad_norm, value, selected
    base_model/               the built-in model's weights + processor (only for --model tiny / small)
    warmup/adapter/           the reference model's LoRA adapter (adapter_model.safetensors + adapter_config.json)
    warmup/train_log.jsonl    loss per optimiser step
    warmup/checkpoint/        the training state while a warm-up runs (resume), removed when it ends
    warmup/warmup.json        warm-up settings, records, skipped records, hashes (the stage's completion marker)
    features/chunks/          per-chunk projected gradients + norms + marker (resume and sharding unit), removed
                              once merged
    features/features.npy     projected gradients, one row per `ok` manifest record, in manifest order
    features/norms.npy        unprojected gradient L2 norms, same rows
    features/meta.json        provenance (`request`), per-chunk record of who computed what (completion marker)
    estimate.json             `tive estimate`'s projection of the run
    select.json               the selection's options and what they came to
    tasks.json                per task: records, ok, skipped, value, budget, selected
    subset.json|.jsonl|...    the selected records, unchanged, in the input's format
    report.html               what was selected and why, self-contained (`tive report` rewrites it)
    baselines/, baselines.json  `tive baseline`'s subsets (the input's format) and what each is
    export/                   `tive export`'s trainer files and lmms-eval script
    records_index.npz         JSON / JSONL input: each record's byte offset and length (+ the input's SHA-256), so
                              that a later stage reads only the records it needs (`tive.data.lazy`)
    tive.log                  a log of every stage run in this directory
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tive.data import Dataset, load_dataset
from tive.data.formats import dataset_sha256
from tive.data.images import resolve_image_paths
from tive.data.records import STATUS_OK
from tive.errors import TiveError
from tive.io import read_json, write_jsonl

PREPARE_FILE = "prepare.json"
MANIFEST_FILE = "manifest.jsonl"
TASKS_FILE = "tasks.json"
SELECT_FILE = "select.json"
LOG_FILE = "tive.log"
BASE_MODEL_DIR = "base_model"
WARMUP_DIR = "warmup"
WARMUP_MARKER = "warmup.json"
TRAIN_LOG = "train_log.jsonl"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FEATURES_DIR = "features"
RECORDS_INDEX = "records_index.npz"

MANIFEST_FIELDS = ("index", "id", "task", "status", "grad_norm", "value", "selected")

# The status of a record prepare left ok but the features stage could not use (its reason follows).
FEATURES_SKIP = "skipped: features: "

log = logging.getLogger("tive")


def open_run_dir(run_dir: Path | str, create: bool = False) -> Path:
    """Check that `run_dir` exists (or create it)."""
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise TiveError(f"{run_dir}: no such run directory (create one with `tive prepare DATA --out {run_dir}`)")
    return run_dir


@contextmanager
def stage_log(run_dir: Path) -> Iterator[None]:
    """Send the `tive` logger to the run's log file for the duration of a stage (then close it again)."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def read_manifest(run_dir: Path) -> list[dict[str, Any]]:
    """The manifest's rows, validated: input order, the required fields present."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise TiveError(f"{path}: missing; run `tive prepare DATA --out {run_dir}` first")
    rows = _read_rows(path)
    for position, row in enumerate(rows):
        for name in ("index", "id", "task", "status"):
            if name not in row:
                raise TiveError(f"{path}: line {position + 1} has no field {name!r} (fields: {MANIFEST_FIELDS})")
        if row["index"] != position:
            raise TiveError(f"{path}: line {position + 1} has index {row['index']}; rows must be in input order 0..N-1")
        task = row["task"]
        if isinstance(task, (int, float)) and not isinstance(task, bool):
            row["task"] = str(task)  # e.g. integer cluster ids: task names are strings
        elif not isinstance(task, str):
            raise TiveError(f"{path}: line {position + 1} (record {row['index']}, id {row['id']!r}) has task "
                            f"{json.dumps(task)}; a task name is a string (or a number, read as one)")
    return rows


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's lines as dicts, compactly: every row shares one copy of each key and of each task and status
    name (json.loads makes new ones per line), so that a rank holding 665K rows holds ~370 bytes a row, not ~860."""
    shared: dict[str, str] = {}
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = {}
            for key, value in json.loads(line).items():
                if key in ("task", "status") and isinstance(value, str):
                    value = shared.setdefault(value, value)
                row[shared.setdefault(key, key)] = value
            rows.append(row)
    return rows


def write_manifest(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write the manifest with its fields in the documented order."""
    write_jsonl(run_dir / MANIFEST_FILE, ({name: row.get(name) for name in MANIFEST_FIELDS} for row in rows))


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest rows whose status is `ok`, in manifest order (the rows of features.npy)."""
    return [row for row in rows if row["status"] == STATUS_OK]


def candidate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows prepare left ok, in manifest order: what the warm-up and the features stage work on (the features
    stage may since have skipped some, `FEATURES_SKIP`; `tive features --retry-skipped` tries those whose reason
    can change again, `--force` all)."""
    return [row for row in rows if row["status"] == STATUS_OK or row["status"].startswith(FEATURES_SKIP)]


def write_records_index(run_dir: Path, data_path: Path, fmt: str, sha256: str) -> None:
    """Write `records_index.npz` for a JSON or JSONL input (nothing for Parquet and `datasets`: their records are
    rows): each record's byte offset and length, and the SHA-256 of the input it indexes."""
    import os

    import numpy as np

    from tive.data.formats import FORMAT_JSON, FORMAT_JSONL
    from tive.data.lazy import build_record_index

    if fmt not in (FORMAT_JSON, FORMAT_JSONL):
        return
    spans = build_record_index(data_path, fmt)
    tmp = run_dir / f".{RECORDS_INDEX}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        np.savez(handle, spans=spans, sha256=np.asarray(sha256))
    os.replace(tmp, run_dir / RECORDS_INDEX)


def _records_index(run_dir: Path, info: dict[str, Any]) -> Any:
    """The record index of a JSON / JSONL run (built and written now for a run prepared before it existed, or whose
    index does not match the input); None for Parquet and `datasets`."""
    import numpy as np

    from tive.data.formats import FORMAT_JSON, FORMAT_JSONL

    if info["format"] not in (FORMAT_JSON, FORMAT_JSONL):
        return None
    path = run_dir / RECORDS_INDEX
    if path.is_file():
        with np.load(path) as stored:
            if str(stored["sha256"]) == info["data_sha256"]:
                return stored["spans"]
    log.info("building %s", path)
    from tive.stages.common import say

    say(f"{run_dir}: indexing the input's records once ({RECORDS_INDEX}; a run prepared before tive wrote it)")
    write_records_index(run_dir, Path(info["data"]), info["format"], info["data_sha256"])
    with np.load(path) as stored:
        return stored["spans"]


def prepared_input(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The input `tive prepare` read, and its prepare.json, checked unchanged since (same SHA-256).

    Raises:
        TiveError: the input is gone or changed (records are referred to by position: a changed file would
            misalign them).
    """
    info = read_json(run_dir / PREPARE_FILE)
    data_path = Path(info["data"])
    if not data_path.exists():
        raise TiveError(f"{data_path}: the input prepared in {run_dir} is gone; restore it or prepare again")
    if dataset_sha256(data_path) != info["data_sha256"]:
        raise TiveError(
            f"{data_path}: changed since `tive prepare` (SHA-256 differs); prepare again into a new run directory"
        )
    return data_path, info


def load_prepared(run_dir: Path, lazy: bool = False,
                  rows: list[dict[str, Any]] | None = None) -> tuple[Dataset, dict[str, Any]]:
    """Re-read the prepared input with the tasks and statuses prepare recorded.

    The input file must be unchanged since prepare (same SHA-256): features and selections refer to records by
    position, so a changed file would silently misalign them.

    With `lazy`, the dataset's `records` is a `tive.data.lazy.LazyRecords`: each record is read from the input
    and parsed when indexed and not kept, so that a stage that needs a sample or a chunk holds only those (a rank's
    memory does not grow with the dataset). `rows` is the manifest when the caller has already read it.
    """
    info_path = run_dir / PREPARE_FILE
    if not info_path.is_file():
        raise TiveError(f"{info_path}: missing; run `tive prepare DATA --out {run_dir}` first")
    data_path, info = prepared_input(run_dir)
    if rows is None:
        rows = read_manifest(run_dir)
    if lazy:
        from tive.data.lazy import lazy_records

        records = lazy_records(data_path, info["format"], _records_index(run_dir, info), rows, info.get("images"),
                               lambda status: status == STATUS_OK or status.startswith(FEATURES_SKIP))
        return Dataset(path=data_path, format=info["format"], records=records, raw_lines=None), info  # type: ignore[arg-type]
    dataset = load_dataset(data_path)
    if len(rows) != len(dataset.records):
        raise TiveError(f"{run_dir / MANIFEST_FILE}: {len(rows)} rows but {data_path} has {len(dataset.records)} records")
    for record, row in zip(dataset.records, rows):
        record.task = row["task"]
        # Records the features stage skipped are still the stages' candidates: their images resolve as before.
        record.status = STATUS_OK if row["status"].startswith(FEATURES_SKIP) else row["status"]
    resolve_image_paths(dataset, info.get("images"))
    return dataset, info
