"""Benchmarks given as LLaVA-format JSON files of held-out records.

Each file is one benchmark, named after the file (`eval/gqa.json` is `gqa`). A record is an ordinary LLaVA
record whose last turn is the reference answer; the turns before it (earlier answers included) are the prompt.
An optional `metric` field says how the answer is scored: `exact` (the default; case- and
punctuation-insensitive), `option` (the first option letter) or `iou` (a box [x1, y1, x2, y2], correct at
IoU >= 0.5). Images resolve under the same `--images` root as the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tive.bench.metrics import METRICS, parse_box, option_letter
from tive.data import Record, check_images, load_dataset
from tive.errors import DataError, TiveError


@dataclass
class Benchmark:
    """One held-out benchmark: its records (prompt = all turns but the last), references and metrics."""

    name: str
    path: Path
    records: list[Record]
    references: list[str]
    metrics: list[str]


def load_benchmark(path: Path | str, images: Path | str | None) -> Benchmark:
    """Read and check one benchmark file; every problem names the file, the record and the field."""
    path = Path(path)
    if not path.is_file():
        raise TiveError(f"--eval {path}: no such file")
    dataset = load_dataset(path)
    if not dataset.records:
        raise TiveError(f"{path}: no records; a benchmark needs at least one")
    check_images(dataset, images, on_missing="error")
    references, metrics = [], []
    for record in dataset.records:
        metric = record.raw.get("metric", "exact")
        if metric not in METRICS:
            raise DataError(path, record.index, record.record_id, "metric",
                            f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")
        last = record.turns[-1]
        if last.role != "assistant":
            raise DataError(path, record.index, record.record_id, "conversations",
                            "the last turn is not an answer", "end each benchmark record with the reference answer")
        reference = last.text().strip()
        if metric == "iou" and parse_box(reference) is None:
            raise DataError(path, record.index, record.record_id, "conversations",
                            f"reference {reference!r} is not a box", "write the box as [x1, y1, x2, y2]")
        if metric == "option" and option_letter(reference) is None:
            raise DataError(path, record.index, record.record_id, "conversations",
                            f"reference {reference!r} has no option letter", "answer with the option's letter, e.g. B")
        references.append(reference)
        metrics.append(metric)
    return Benchmark(path.stem, path, dataset.records, references, metrics)


def load_benchmarks(paths: list[Path | str], images: Path | str | None) -> list[Benchmark]:
    """Every benchmark file, checked; names (file stems) must be distinct."""
    if not paths:
        raise TiveError("no benchmark given; pass --eval FILE (repeatable) with your own data")
    benchmarks = [load_benchmark(p, images) for p in paths]
    names = [b.name for b in benchmarks]
    duplicate = sorted({n for n in names if names.count(n) > 1})
    if duplicate:
        raise TiveError(f"--eval: two benchmark files are named {duplicate[0]!r}; benchmarks are named after their "
                        "files, so give them distinct names")
    return benchmarks
