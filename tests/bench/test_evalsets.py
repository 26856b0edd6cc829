"""Benchmark files: the last answer is the reference, `metric` is checked, errors name file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.bench.evalsets import load_benchmark, load_benchmarks
from tive.data import check_images, load_dataset
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
        (_record("red", "cloze"), "field 'options': a cloze record needs at least two option strings"),
        (_record("red", "cloze", options=["blue", "green"]), "the reference 'red' is not one of the options"),
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


def _mc(question: str, options: list[str], answer: str) -> dict:
    lines = "\n".join(f"{'ABCDEFG'[k]}. {o}" for k, o in enumerate(options))
    return {"id": "m", "metric": "option",
            "conversations": [{"from": "human", "value": f"{question}\n{lines}\nAnswer with the letter."},
                              {"from": "gpt", "value": answer}]}


def test_chance_level_of_each_metric(tmp_path: Path) -> None:
    from tive.bench.evalsets import chance_level

    def level(name: str, records: list[dict]) -> float:
        return chance_level(load_benchmark(_write(tmp_path / f"{name}.json", records), None))

    assert level("four", [_mc("Colour?", ["red", "blue", "green", "pink"], "B")] * 3) == pytest.approx(25.0)
    assert level("mixed", [_mc("Q?", ["a", "b"], "A"), _mc("Q?", ["a", "b", "c", "d"], "D")]) == pytest.approx(37.5)
    # No option lines in the prompt: as many options as letters up to the highest reference (at least two).
    assert level("bare", [_record("C", "option"), _record("A", "option")]) == pytest.approx(100 / 3)
    assert level("pope", [_record("yes"), _record("No."), _record("yes")]) == pytest.approx(50.0)
    # Open answers: always giving the commonest one ("red", 2 of 4).
    assert level("open", [_record(a) for a in ("red", "Red.", "blue", "green")]) == pytest.approx(50.0)
    assert level("both", [_record("yes"), _record("red"), _record("blue")]) == pytest.approx(100 * (0.5 + 0.5 + 0.5) / 3)
    assert level("boxes", [_record("[0.1, 0.1, 0.5, 0.5]", "iou")] * 2) == 0.0
    # Cloze: one over the number of option strings of each record.
    assert level("cloze", [_record("red", "cloze", options=["red", "blue"]),
                           _record("b", "cloze", options=["a", "b", "c", "d"])]) == pytest.approx(37.5)


def test_seen_in_training_compares_image_bytes_not_paths(tmp_path: Path) -> None:
    from PIL import Image

    from tive.bench.evalsets import seen_in_training

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(images / "train.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(images / "fresh.png")
    (images / "copy.png").write_bytes((images / "train.png").read_bytes())  # same image, other name
    train = load_dataset(_write(tmp_path / "train.json", [_record("x", image="train.png")]))
    check_images(train, images)
    bench = load_benchmark(_write(tmp_path / "b.json", [_record("y", image="copy.png"), _record("z", image="fresh.png"),
                                                        _record("w")]), images)
    assert seen_in_training([bench], train.records) == {"b": 1}
