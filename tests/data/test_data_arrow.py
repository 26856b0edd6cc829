"""Parquet files and `datasets` save_to_disk directories: embedded image bytes, subsets written back in kind."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tive.data import (
    EmbeddedImage,
    assign_tasks,
    check_images,
    dataset_sha256,
    load_dataset,
    open_images,
    resolve_image_paths,
    write_subset,
)
from tive.errors import DataError, TiveError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

IMAGE = {"type": "image"}
COLORS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}


def png(color: str, size: tuple[int, int] = (6, 4), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def messages_rows() -> dict[str, list[Any]]:
    """Three TRL/HF-style rows: `images` (a list of Image values) + `messages` with bare image parts."""
    user_parts = [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}]
    two_parts = [{"type": "image", "text": None}, {"type": "image", "text": None}, {"type": "text", "text": "Same?"}]
    return {
        "id": ["r0", "r1", "r2"],
        "source": ["vqa", "caption", "vqa"],
        "images": [
            [{"bytes": png("red"), "path": "red.png"}],
            [{"bytes": png("green", (3, 3), "WEBP"), "path": None}, {"bytes": png("blue"), "path": "b/blue.png"}],
            [],
        ],
        "messages": [
            [{"role": "user", "content": user_parts}, {"role": "assistant", "content": [text("Red.")]}],
            [{"role": "user", "content": two_parts}, {"role": "assistant", "content": [text("No.")]}],
            [{"role": "user", "content": [text("Hi")]}, {"role": "assistant", "content": [text("Hello")]}],
        ],
    }


def hf_features() -> Any:
    datasets = pytest.importorskip("datasets")
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "source": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)}),
        }
    )


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    """A Parquet file shaped as `datasets.Dataset.to_parquet` writes it (with the `huggingface` metadata)."""
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(messages_rows(), features=hf_features()).to_parquet(str(path))
    return path


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "saved"
    datasets.Dataset.from_dict(messages_rows(), features=hf_features()).save_to_disk(str(path))
    return path


def check_messages_records(dataset: Any, blue_name: str = "b/blue.png") -> None:
    """The three rows of `messages_rows`, read with their embedded images."""
    r0, r1, r2 = dataset.records
    assert [r.record_id for r in dataset.records] == ["r0", "r1", "r2"]
    assert dataset.record_shapes() == {"openai": 3}
    assert r0.images == ["red.png"] and r0.image_fields == ["images"]
    assert r1.images == ["<embedded image>", blue_name]
    assert r2.images == [] and r2.image_data == []
    assert r0.turns[0].content == [IMAGE, text("Colour?")]
    assert r1.turns[0].content == [IMAGE, IMAGE, text("Same?")]
    # The bytes stay in the table: the record holds lazy handles, also in `raw`.
    assert all(isinstance(item, EmbeddedImage) for item in r1.image_data)
    assert r1.raw["images"] == r1.image_data
    assert r0.image_data[0].read() == png("red")

    check_images(dataset, None)  # embedded images need no image root
    assert all(record.ok for record in dataset.records)
    assert r1.image_paths == [None, None]
    green, blue = open_images(r1)
    assert (green.size, blue.size) == ((3, 3), (6, 4))
    assert blue.getpixel((0, 0)) == COLORS["blue"]
    assert open_images(r0)[0].getpixel((1, 1)) == COLORS["red"]
    assert assign_tasks(dataset, task_field="source").endswith("2 tasks")


# ----------------------------------------------------------------------------------------------------------------
# Parquet


def test_parquet_with_embedded_images(parquet_file: Path) -> None:
    dataset = load_dataset(parquet_file)
    assert dataset.format == "parquet" and dataset.raw_lines is None
    check_messages_records(dataset)


def test_parquet_subset_same_schema_selected_rows(parquet_file: Path, tmp_path: Path) -> None:
    before = dataset_sha256(parquet_file)
    dataset = load_dataset(parquet_file)
    out = write_subset(dataset, [2, 0, 1], tmp_path / "run")
    assert out == tmp_path / "run" / "subset.parquet"
    original, subset = pq.read_table(parquet_file), pq.read_table(out)
    assert subset.schema.equals(original.schema, check_metadata=True)
    assert b"huggingface" in (subset.schema.metadata or {})
    rows = original.to_pylist()
    assert subset.to_pylist() == [rows[0], rows[0], rows[2]]
    assert dataset_sha256(parquet_file) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset.parquet"]  # no temporary left behind

    # The subset is itself a valid input, read the same way.
    again = load_dataset(out)
    assert [r.record_id for r in again.records] == ["r0", "r0", "r2"]
    assert write_subset(dataset, [0, 0, 0], tmp_path / "empty").exists()
    assert pq.read_table(tmp_path / "empty" / "subset.parquet").num_rows == 0


def test_parquet_detected_by_content_not_name(parquet_file: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "data.json"
    misnamed.write_bytes(parquet_file.read_bytes())
    dataset = load_dataset(misnamed)
    assert dataset.format == "parquet" and len(dataset.records) == 3


def test_parquet_llava_columns_with_image_paths(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (5, 5), "blue").save(root / "a.jpg", format="PNG")  # a PNG named .jpg
    table = pa.table(
        {
            "id": [1, 2],
            "image": ["a.jpg", None],
            "system_prompt": ["Be brief.", None],
            "conversations": [
                [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Blue."}],
                [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
            ],
        }
    )
    path = tmp_path / "llava.parquet"
    pq.write_table(table, path)
    dataset = load_dataset(path)
    assert dataset.record_shapes() == {"llava": 2}
    first, second = dataset.records
    assert first.images == ["a.jpg"] and second.images == []
    assert [turn.role for turn in first.turns] == ["system", "user", "assistant"]
    with pytest.raises(TiveError, match="--images"):
        check_images(dataset, None)
    check_images(dataset, root)
    assert first.image_paths == [(root / "a.jpg").resolve()]
    assert open_images(first)[0].getpixel((0, 0)) == COLORS["blue"]


def test_parquet_image_value_without_bytes_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (2, 2)).save(root / "p.png")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": None, "path": "p.png"}, {"bytes": png("red"), "path": None}], image_type),
            "instruction": ["Q1", "Q2"],
            "output": ["A1", "A2"],
        }
    )
    path = tmp_path / "mixed.parquet"
    pq.write_table(table, path)
    dataset = load_dataset(path)
    first, second = dataset.records
    assert first.images == ["p.png"] and first.image_data == []
    assert second.images == ["<embedded image>"] and isinstance(second.image_data[0], EmbeddedImage)
    check_images(dataset, root)
    assert first.image_paths == [(root / "p.png").resolve()] and second.image_paths == [None]
    # A later stage re-reads the input and resolves without opening anything.
    again = load_dataset(path)
    resolve_image_paths(again, root)
    assert [r.image_paths for r in again.records] == [[(root / "p.png").resolve()], [None]]


def test_parquet_image_inside_content_parts(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    part = pa.struct([("type", pa.string()), ("text", pa.string()), ("image", image_type)])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    rows = [
        [
            {"role": "user", "content": [{"type": "image", "image": {"bytes": png("green"), "path": "g.png"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Green."}]},
        ]
    ]
    path = tmp_path / "parts.parquet"
    pq.write_table(pa.table({"messages": pa.array(rows, pa.list_(message))}), path)
    record = load_dataset(path).records[0]
    assert record.images == ["g.png"] and record.image_fields == ["messages[0].content[0].image"]
    assert open_images(record)[0].getpixel((0, 0)) == COLORS["green"]


def test_parquet_bad_rows(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["ok", "bad"],
            "messages": [
                [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}],
            ],
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert (info.value.index, info.value.record_id, info.value.field) == (1, "bad", "messages[1].role")
    assert "bad.parquet" in str(info.value)


def test_parquet_unreadable_embedded_image(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": ["good", "broken"],
            "images": pa.array(
                [[{"bytes": png("red"), "path": "r.png"}], [{"bytes": b"\x89PNG but not really", "path": "x.png"}]],
                pa.list_(image_type),
            ),
            "conversations": [[{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]] * 2,
        }
    )
    path = tmp_path / "broken.parquet"
    pq.write_table(table, path)
    dataset = load_dataset(path)
    with pytest.raises(DataError) as info:
        check_images(dataset, None)
    assert (info.value.index, info.value.field) == (1, "images")
    assert "embedded image 'x.png' is not a readable image" in str(info.value)
    check_images(dataset, None, on_missing="skip")
    assert dataset.records[0].ok
    assert dataset.records[1].status.startswith("skipped: unreadable embedded image x.png")


def test_not_parquet_garbage_with_magic(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TiveError, match="cannot read the Parquet file"):
        load_dataset(path)


def test_parquet_subset_never_overwrites_the_input(parquet_file: Path) -> None:
    input_path = parquet_file.parent / "subset.parquet"
    os.replace(parquet_file, input_path)
    before = input_path.read_bytes()
    dataset = load_dataset(input_path)
    with pytest.raises(TiveError, match="overwrite the input"):
        write_subset(dataset, [1, 1, 1], input_path.parent)
    assert input_path.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------------
# datasets save_to_disk directories


def test_hf_dataset_dir_with_embedded_images(hf_dir: Path) -> None:
    dataset = load_dataset(hf_dir)
    assert dataset.format == "hf_dataset" and dataset.path == hf_dir
    check_messages_records(dataset, blue_name="blue.png")  # save_to_disk keeps only the file name


def test_hf_dataset_subset_reloads_with_selected_rows(hf_dir: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    before = dataset_sha256(hf_dir)
    dataset = load_dataset(hf_dir)
    out = write_subset(dataset, [1, 0, 2], tmp_path / "run")
    assert out == tmp_path / "run" / "subset" and out.is_dir()
    subset = datasets.load_from_disk(str(out))
    original = datasets.load_from_disk(str(hf_dir))
    assert subset.features == original.features
    raw = original.with_format("arrow")[:].to_pylist()
    assert subset.with_format("arrow")[:].to_pylist() == [raw[0], raw[2], raw[2]]
    assert dataset_sha256(hf_dir) == before  # the input directory is never written to
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset"]

    # A second selection replaces the first; the result is itself a valid input.
    out = write_subset(dataset, [0, 1, 0], tmp_path / "run")
    again = load_dataset(out)
    assert [r.record_id for r in again.records] == ["r1"]
    assert open_images(again.records[0])[1].getpixel((0, 0)) == COLORS["blue"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset"]

    out = write_subset(dataset, [0, 0, 0], tmp_path / "empty")
    assert datasets.load_from_disk(str(out)).num_rows == 0


def test_hf_dataset_dict_dir_asks_for_a_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "dict"
    split = datasets.Dataset.from_dict(messages_rows(), features=hf_features())
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    with pytest.raises(TiveError, match=r"DatasetDict with splits test, train; give one split's directory"):
        load_dataset(path)
    assert len(load_dataset(path / "train").records) == 3


def test_hf_dataset_bad_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = messages_rows()
    rows["messages"][2] = [{"role": "user", "content": [text("Hi")]}, {"role": "assistant", "content": [text(" ")]}]
    path = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=hf_features()).save_to_disk(str(path))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert (info.value.index, info.value.record_id, info.value.field) == (2, "r2", "messages")
    assert "no assistant answer" in str(info.value)


def test_plain_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"")
    with pytest.raises(TiveError, match="is a directory, not a dataset file"):
        load_dataset(tmp_path)


def test_dataset_sha256_of_a_directory_sees_changes(hf_dir: Path) -> None:
    before = dataset_sha256(hf_dir)
    assert before == dataset_sha256(hf_dir)
    state = hf_dir / "state.json"
    state.write_text(state.read_text() + " ")
    assert dataset_sha256(hf_dir) != before


# ----------------------------------------------------------------------------------------------------------------
# Reading a few records by position (the report's examples)

@pytest.mark.parametrize("kind", ["parquet", "hf_dataset"])
def test_read_records_takes_rows_by_position_with_their_embedded_images(kind: str, parquet_file: Path,
                                                                        hf_dir: Path) -> None:
    from tive.data.formats import read_records

    path = parquet_file if kind == "parquet" else hf_dir
    found = read_records(path, kind, [2, 1, 7])
    assert sorted(found) == [1, 2]  # a position past the end is not there
    full = load_dataset(path).records
    for index, record in found.items():
        assert (record.index, record.record_id, record.turns, record.images) == (
            full[index].index, full[index].record_id, full[index].turns, full[index].images)
    green, blue = (item.read() for item in found[1].image_data)
    assert blue == png("blue") and green == full[1].image_data[0].read()


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_read_records_from_json_and_json_lines(fmt: str, tmp_path: Path) -> None:
    import json

    from tive.data.formats import read_records

    raws = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": f"A{i}"}]}
            for i in range(6)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(raws) if fmt == "json" else "\n\n".join(json.dumps(r) for r in raws) + "\n")
    found = read_records(path, fmt, [4, 0])
    assert sorted(found) == [0, 4]
    assert found[4].record_id == "r4" and found[4].index == 4
    assert [turn.text() for turn in found[4].turns] == ["Q4?", "A4"]
