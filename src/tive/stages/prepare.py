"""`tive prepare`: read and validate the input, assign tasks, check images; write manifest.jsonl and prepare.json."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tive.badrecords import check_policy
from tive.config import PrepareOptions, write_run_config
from tive.data import assign_tasks, check_images, load_dataset
from tive.data.formats import dataset_sha256
from tive.errors import TiveError
from tive.io import read_json, write_json
from tive.rundir import PREPARE_FILE, open_run_dir, stage_log, write_manifest
from tive.stages.common import say


def check_run_dir_apart(data: Path, run_dir: Path) -> None:
    """Refuse a run directory that is the input, lies inside it, or holds it: stages write there, and the input
    is never to be written (a `datasets` directory would get a manifest, an input named manifest.jsonl would be
    overwritten)."""
    data, run_dir = data.resolve(), run_dir.resolve()
    if run_dir == data or run_dir.is_relative_to(data) or data.is_relative_to(run_dir):
        raise TiveError(
            f"--out {run_dir}: the run directory must not be the input {data}, inside it or around it (tive writes "
            "its files there and never writes the input); choose another --out"
        )


def run_prepare(data: Path | str, run_dir: Path | str, options: PrepareOptions) -> dict[str, Any]:
    """Read and validate the input, assign tasks, check images; write manifest.jsonl and prepare.json."""
    data = Path(data).resolve()
    check_policy(options.on_bad_record, options.max_bad_fraction)
    check_run_dir_apart(data, Path(run_dir))
    run_dir = open_run_dir(run_dir, create=True)
    with stage_log(run_dir):
        info = _prepare(data, run_dir, options)
    write_run_config(run_dir, data=str(data), prepare=options)
    return info


def _prepare(data: Path, run_dir: Path, options: PrepareOptions) -> dict[str, Any]:
    info_path = run_dir / PREPARE_FILE
    if info_path.is_file():
        old = read_json(info_path)
        if old["options"] == asdict(options) and old["data_sha256"] == dataset_sha256(data):
            say(f"prepare: {run_dir} already prepared from this input with these options; nothing to do")
            return old
        raise TiveError(
            f"{run_dir}: already prepared from another input or with other options; use a new --out directory"
        )
    dataset = load_dataset(data)
    message = assign_tasks(dataset, task_field=options.task_field, task_rules=options.task_rules)
    bad = check_images(dataset, options.images, options.on_bad_record, options.max_bad_fraction)
    info = {
        "data": str(data),
        "data_sha256": dataset_sha256(data),
        "format": dataset.format,
        "images": str(Path(options.images).resolve()) if options.images else None,
        "options": asdict(options),
        "records": len(dataset.records),
        "ok": sum(record.ok for record in dataset.records),
        "tasks": dict(sorted(Counter(record.task for record in dataset.records).items())),
    }
    rows = [
        {"index": r.index, "id": r.record_id, "task": r.task, "status": r.status} for r in dataset.records
    ]
    write_manifest(run_dir, rows)
    write_json(info_path, info)  # last: prepare's completion marker
    skipped = info["records"] - info["ok"]
    say(f"prepare: {message}")
    say(
        f"prepare: {info['records']} records from {data.name} ({dataset.format}), {info['ok']} ok"
        + (f", {skipped} skipped (see status in manifest.jsonl)" if skipped else "")
    )
    if bad.reasons:
        say(bad.summary())
    return info
