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
from tive.rundir import PREPARE_FILE, open_run_dir, stage_log, write_manifest, write_records_index
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


def _differing(old: dict[str, Any], data: Path, options: PrepareOptions) -> list[str]:
    """What differs between a finished prepare and this one, among what decides its output: the input, the image
    root and the task options (paths compared resolved). The tolerances (--on-bad-record, --max-bad-fraction)
    decide only whether prepare stops: they are re-checked (`_recheck`), never a reason to prepare again."""
    recorded = old.get("options", {})
    now = {"data": dataset_sha256(data), "images": _resolved(options.images),
           "task_field": options.task_field, "task_rules": _rules(options.task_rules)}
    before = {"data": old.get("data_sha256"), "images": old.get("images"),
              "task_field": recorded.get("task_field"), "task_rules": _rules(recorded.get("task_rules"))}
    return [name for name in now if now[name] != before[name]]


def _resolved(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def _rules(task_rules: str | None) -> str | None:
    from tive.data.tasks import BUILTIN_RULES

    return task_rules if task_rules is None or task_rules in BUILTIN_RULES else _resolved(task_rules)


def _recheck(run_dir: Path, old: dict[str, Any], options: PrepareOptions) -> None:
    """The records prepare skipped, checked against this command's tolerances (see `tive.badrecords.recheck`)."""
    from tive.badrecords import recheck
    from tive.rundir import FEATURES_SKIP, read_manifest

    failed = old["records"] - old["ok"]
    first = None
    if failed:
        row = next((row for row in read_manifest(run_dir)
                    if row["status"] != "ok" and not row["status"].startswith(FEATURES_SKIP)), None)
        first = f"record {row['index']}: {row['status']}" if row else None
    ran_with = old.get("options", {}).get("max_bad_fraction")
    line = recheck("prepare", failed, old["records"], options.on_bad_record, options.max_bad_fraction, ran_with,
                   first, hint="fix them and prepare into a new --out directory")
    if line:
        say(line)


def _prepare(data: Path, run_dir: Path, options: PrepareOptions) -> dict[str, Any]:
    info_path = run_dir / PREPARE_FILE
    if info_path.is_file():
        old = read_json(info_path)
        differing = _differing(old, data, options)
        if differing:
            raise TiveError(
                f"{run_dir}: already prepared from another input or with other options ({', '.join(differing)}); "
                "use a new --out directory"
            )
        say(f"prepare: {run_dir} already prepared from this input with these options; nothing to do")
        _recheck(run_dir, old, options)
        return old
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
    del rows
    # The later stages read only the records they need through this index (`tive.data.lazy`).
    write_records_index(run_dir, data, dataset.format, info["data_sha256"])
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
