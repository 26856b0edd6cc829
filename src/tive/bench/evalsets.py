"""Benchmarks given as LLaVA-format JSON files of held-out records.

Each file is one benchmark, named after the file (`eval/gqa.json` is `gqa`). A record is an ordinary LLaVA
record whose last turn is the reference answer; the turns before it (earlier answers included) are the prompt.
An optional `metric` field says how the answer is scored: `exact` (the default; case- and
punctuation-insensitive), `option` (the first option letter), `iou` (a box [x1, y1, x2, y2], correct at
IoU >= 0.5) or `cloze` (multiple choice scored by likelihood: the record's `options` field lists the option
strings, the reference is one of them, and the model's choice is the option with the highest summed
log-likelihood as the answer). Images resolve under the same `--images` root as the training data.

`chance_level` is what answering without looking at the image scores, so a report can tell a model that
measures something from one that does not (see its docstring for the rule of each metric).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tive.bench.metrics import METRICS, normalise, option_letter, parse_box
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
    options: list[list[str] | None] | None = None  # per record: the option strings of a `cloze` record, else None


def load_benchmark(path: Path | str, images: Path | str | None) -> Benchmark:
    """Read and check one benchmark file; every problem names the file, the record and the field."""
    path = Path(path)
    if not path.is_file():
        raise TiveError(f"--eval {path}: no such file")
    dataset = load_dataset(path)
    if not dataset.records:
        raise TiveError(f"{path}: no records; a benchmark needs at least one")
    check_images(dataset, images, on_missing="error")
    references, metrics, options = [], [], []
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
        choices = record.raw.get("options")
        if metric == "cloze":
            if (not isinstance(choices, list) or len(choices) < 2
                    or not all(isinstance(c, str) and c.strip() for c in choices)):
                raise DataError(path, record.index, record.record_id, "options",
                                "a cloze record needs at least two option strings",
                                'list them, e.g. "options": ["red", "blue", "green", "yellow"]')
            if normalise(reference) not in {normalise(c) for c in choices}:
                raise DataError(path, record.index, record.record_id, "options",
                                f"the reference {reference!r} is not one of the options", "add it to `options`")
        references.append(reference)
        metrics.append(metric)
        options.append([c.strip() for c in choices] if metric == "cloze" else None)
    return Benchmark(path.stem, path, dataset.records, references, metrics, options)


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


_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s+\S", re.MULTILINE)
YES_NO = ("yes", "no")


def option_count(record: Record) -> int:
    """How many options (lines such as "A. red" or "(B) circle") the record's last question lists; 0 if none."""
    questions = [turn for turn in record.turns[:-1] if turn.role == "user"]
    if not questions:
        return 0
    return len(set(_OPTION_LINE.findall(questions[-1].text())))


def chance_level(benchmark: Benchmark) -> float:
    """Accuracy (%) of answering without the image, the mean over records of:

    - `option`: 1 / the number of options the question lists (when it lists fewer than two, the number of
      letters up to the highest reference letter of the benchmark, at least two);
    - `exact` with a yes/no reference: 1/2;
    - other `exact`: the share of the most frequent reference among the benchmark's other exact records
      (always giving the commonest answer);
    - `iou`: 0 (a box from nowhere);
    - `cloze`: 1 / the number of options.
    """
    if not benchmark.records:
        return 0.0
    letters = [option_letter(r) for r, m in zip(benchmark.references, benchmark.metrics) if m == "option"]
    fallback = max([2] + [ord(x) - ord("A") + 1 for x in letters if x])
    open_answers = [normalise(r) for r, m in zip(benchmark.references, benchmark.metrics)
                    if m == "exact" and normalise(r) not in YES_NO]
    commonest = Counter(open_answers).most_common(1)[0][1] / len(open_answers) if open_answers else 0.0
    total = 0.0
    choices = benchmark.options or [None] * len(benchmark.records)
    for record, reference, metric, options in zip(benchmark.records, benchmark.references, benchmark.metrics,
                                                  choices):
        if metric == "cloze":
            total += 1.0 / len(options or [reference])
        elif metric == "option":
            n = option_count(record)
            total += 1.0 / (n if n >= 2 else fallback)
        elif metric == "exact":
            total += 0.5 if normalise(reference) in YES_NO else commonest
    return 100.0 * total / len(benchmark.records)


def seen_in_training(benchmarks: list[Benchmark], training: list[Record]) -> dict[str, int]:
    """Per benchmark, how many of its records use an image that a training (or alignment) record uses too,
    compared by the images' bytes (SHA-256), not their paths."""
    from tive.bench.keys import image_digests

    seen = {digest for record in training for digest in image_digests(record)}
    return {b.name: sum(any(d in seen for d in image_digests(r)) for r in b.records) for b in benchmarks}
