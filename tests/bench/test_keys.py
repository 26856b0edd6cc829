"""Cache keys follow the inputs' content: benchmark files, images rewritten in place, tasks, task field."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tive.bench.evalsets import load_benchmarks
from tive.bench.keys import benchmarks_key, records_key
from tive.data import assign_tasks, check_images, load_dataset


def _record(answer: str, image: str | None = None, **extra: object) -> dict:
    record = {"id": answer, "conversations": [{"from": "human", "value": "<image>\nWhat?" if image else "What?"},
                                              {"from": "gpt", "value": answer}], **extra}
    if image:
        record["image"] = image
    return record


def _train(path: Path, images: Path, task_field: str | None = None) -> list:
    dataset = load_dataset(path)
    if task_field:
        assign_tasks(dataset, task_field=task_field)
    check_images(dataset, images)
    return dataset.records


def test_keys_change_with_content_not_paths(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(images / "a.png")
    train = tmp_path / "train.json"
    train.write_text(json.dumps([_record("red", "a.png", dataset="x", group="g1"), _record("hi", dataset="y", group="g1")]))
    first = records_key(_train(train, images))

    copy = tmp_path / "elsewhere.json"  # same content under another name: same key
    copy.write_text(train.read_text())
    assert records_key(_train(copy, images)) == first

    # Tasks enter the key only where asked (the selection), and follow the task field.
    by_dataset = records_key(_train(train, images, "dataset"), task=True)
    by_group = records_key(_train(train, images, "group"), task=True)
    assert by_dataset != by_group
    assert records_key(_train(train, images, "dataset")) == records_key(_train(train, images, "group")) == first

    # The same path with other pixels: another key.
    Image.new("RGB", (16, 16), (0, 0, 200)).save(images / "a.png")
    assert records_key(_train(train, images)) != first


def test_benchmark_key_follows_names_records_and_metrics(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_record("red")]))
    b.write_text(json.dumps([_record("B", metric="option")]))
    both = benchmarks_key(load_benchmarks([a, b], None))
    assert benchmarks_key(load_benchmarks([a], None)) != both
    a.write_text(json.dumps([_record("blue")]))  # edited in place
    edited = benchmarks_key(load_benchmarks([a, b], None))
    assert edited != both
    b.write_text(json.dumps([_record("B", metric="exact")]))  # another metric, same answer
    assert benchmarks_key(load_benchmarks([a, b], None)) != edited
    renamed = tmp_path / "c.json"
    renamed.write_text(a.read_text())
    assert benchmarks_key(load_benchmarks([renamed, b], None)) != benchmarks_key(load_benchmarks([a, b], None))
