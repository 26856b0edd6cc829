"""Benchmark files: the last answer is the reference, `metric` is checked, errors name file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.bench.evalsets import load_benchmark, load_benchmarks
from tive.errors import TiveError


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def _record(answer: str, metric: str | None = None, **extra: object) -> dict:
    record = {"id": "q1", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": answer}]}
    if metric:
        record["metric"] = metric
    record.update(extra)
    return record


def test_reads_references_and_default_metric(tmp_path: Path) -> None:
    multi = {"id": 7, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                        {"from": "human", "value": "c"}, {"from": "gpt", "value": "B"}],
             "metric": "option"}
    bench = load_benchmark(_write(tmp_path / "mine.json", [_record("Red"), multi]), None)
    assert bench.name == "mine"
    assert bench.references == ["Red", "B"]
    assert bench.metrics == ["exact", "option"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_record("x", "bleu"), "field 'metric': unknown metric 'bleu'"),
        (_record("no box", "iou"), "is not a box"),
        (_record("circle", "option"), "has no option letter"),
        ({"id": "q1", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
         "last turn is not an answer"),
    ],
)
def test_bad_records_name_the_record(tmp_path: Path, record: dict, message: str) -> None:
    path = _write(tmp_path / "bad.json", [_record("ok"), record])
    with pytest.raises(TiveError, match="record 1") as info:
        load_benchmark(path, None)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(TiveError, match="no such file"):
        load_benchmark(tmp_path / "nope.json", None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a" / "same.json", [_record("x")])
    second = _write(tmp_path / "b" / "same.json", [_record("y")])
    with pytest.raises(TiveError, match="distinct names"):
        load_benchmarks([first, second], None)
    with pytest.raises(TiveError, match="--eval"):
        load_benchmarks([], None)
