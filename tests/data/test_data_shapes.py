"""Record shapes beyond LLaVA: LLaMA-Factory/ShareGPT `messages`, OpenAI-style content parts, instruction/output.

Real third-party files first (counts, images, the prepare flow with the right image root, subsets in kind), then
synthetic records for each rule and each bad-record kind.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tive.data import (
    EmbeddedImage,
    Turn,
    assign_tasks,
    check_images,
    load_dataset,
    open_images,
    resolve_image_paths,
    write_subset,
)
from tive.errors import DataError, TiveError

IMAGE = {"type": "image"}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def png_bytes(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def write(tmp_path: Path, records: list[Any], container: str, name: str = "data") -> Path:
    path = tmp_path / f"{name}.{container}"
    if container == "json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def chat(user: Any = "What is this?", answer: Any = "A cat.", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict(fields)
    record["messages"] = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return record


# ----------------------------------------------------------------------------------------------------------------
# Real files: every instruction-data file parses with its record count and shapes

INSTRUCTION_FILES = {
    "LLaMA-Factory/data/llava_instruct_100.json": (100, {"llava": 100}),
    "LLaMA-Factory/data/mllm_demo.json": (6, {"sharegpt": 6}),
    "LLaMA-Factory/data/v1_multimodal_demo.jsonl": (24, {"openai": 24}),
    "LLaVA/playground/data/coco2014_val_gpt4_qa_30x3.jsonl": (90, {"instruction": 90}),
    "Qwen3-VL/qwen-vl-finetune/demo/single_images.json": (3, {"llava": 3}),
    "lmms-finetune/example_data/single_image.json": (2, {"llava": 2}),
    "lmms-finetune/example_data/multi_images.json": (2, {"llava": 2}),
    "lmms-finetune/example_data/single_image_has_text_only.json": (4, {"llava": 4}),
    "FastChat/data/dummy_conversation.json": (500, {"llava": 500}),
}


@pytest.mark.parametrize("name", sorted(INSTRUCTION_FILES))
def test_real_instruction_files_parse(realdata: Path, name: str) -> None:
    count, shapes = INSTRUCTION_FILES[name]
    dataset = load_dataset(realdata / name)
    assert len(dataset.records) == count
    assert dataset.record_shapes() == shapes
    assert [record.index for record in dataset.records] == list(range(count))
    for record in dataset.records:
        n_image_parts = sum(part == IMAGE for turn in record.turns for part in turn.content)
        assert n_image_parts == len(record.images)
        assert any(turn.role == "assistant" and turn.text().strip() for turn in record.turns)
        assert all("<image>" not in turn.text() for turn in record.turns)


def test_real_visual_cot_all_files_parse(realdata: Path) -> None:
    folder = realdata / "Visual-CoT/viscot_benchmark/benchmark"
    datasets = [load_dataset(path) for path in sorted(folder.glob("*.json"))]
    assert sum(len(dataset.records) for dataset in datasets) == 9937
    assert all(dataset.record_shapes() == {"llava": len(dataset.records)} for dataset in datasets)


def test_real_mllm_demo_messages_and_images(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/mllm_demo.json")
    first = dataset.records[0]
    assert first.record_id is None
    assert first.images == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]
    assert first.image_fields == ["images", "images"]
    assert [turn.role for turn in first.turns] == ["user", "assistant", "user", "assistant"]
    # "<image>Who are they?" and "What are they doing?<image>": each image where its placeholder is.
    assert first.turns[0].content == [IMAGE, text("Who are they?")]
    assert first.turns[2].content == [text("What are they doing?"), IMAGE]
    assert [len(record.images) for record in dataset.records] == [2, 1, 1, 2, 1, 1]
    assert dataset.records[3].first_instruction() == "他们是谁？"


def test_real_v1_multimodal_demo_content_parts(realdata: Path) -> None:
    path = realdata / "LLaMA-Factory/data/v1_multimodal_demo.jsonl"
    dataset = load_dataset(path)
    assert dataset.format == "jsonl"
    assert len(dataset.raw_lines or []) == 24  # the blank lines do not count
    first = dataset.records[0]
    # LLaMA-Factory v1 writes {"type": "image_url", "value": "data/mllm_demo_data/1.jpg"}: relative to its root.
    assert first.images == ["data/mllm_demo_data/1.jpg", "data/mllm_demo_data/1.jpg"]
    assert first.image_fields == ["messages[0].content[0].value", "messages[2].content[1].value"]
    assert first.turns[2].content == [text("What are they doing?"), IMAGE]
    # The file is mllm_demo.json's six conversations four times over, in content-part form: same turns.
    mllm = load_dataset(realdata / "LLaMA-Factory/data/mllm_demo.json").records
    assert [record.turns for record in dataset.records] == [mllm[i % 6].turns for i in range(24)]
    assert [[Path(p).name for p in r.images] for r in dataset.records] == [
        [Path(p).name for p in mllm[i % 6].images] for i in range(24)
    ]


def test_real_gpt4_qa_instruction_output(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaVA/playground/data/coco2014_val_gpt4_qa_30x3.jsonl")
    first = dataset.records[0]
    assert first.record_id == "000000525439"
    assert first.images == ["COCO_val2014_000000525439.jpg"]
    assert first.turns[0].content == [IMAGE, text("What is the position of the skateboard in the image?")]
    assert first.turns[1].role == "assistant" and first.turns[1].text().startswith("The skateboard in the image")
    assert assign_tasks(dataset, task_field="type").endswith("3 tasks")
    assert {task: sum(r.task == task for r in dataset.records) for task in ("conv", "detail", "complex")} == {
        "conv": 30,
        "detail": 30,
        "complex": 30,
    }
    # Only the heron COCO image ships: its 3 records are ok, the other 87 skipped as missing.
    check_images(dataset, realdata / "heron/images", on_missing="skip")
    ok = [record for record in dataset.records if record.ok]
    assert [record.images for record in ok] == [["COCO_val2014_000000441147.jpg"]] * 3
    assert all(record.status.startswith("skipped: missing image") for record in dataset.records if not record.ok)
    assert open_images(ok[0])[0].size == (640, 480)


# prepare-style flow: load_dataset -> assign_tasks -> check_images with the right root, then open the images.
PREPARE_FLOWS = {
    "mllm_demo": ("LLaMA-Factory/data/mllm_demo.json", "LLaMA-Factory/data", 6, (300, 168)),
    "v1_multimodal_demo": ("LLaMA-Factory/data/v1_multimodal_demo.jsonl", "LLaMA-Factory", 24, (300, 168)),
    "qwen_single_images": (
        "Qwen3-VL/qwen-vl-finetune/demo/single_images.json",
        "Qwen3-VL/qwen-vl-finetune",
        3,
        None,
    ),
    "lmms_single_image": (
        "lmms-finetune/example_data/single_image.json",
        "lmms-finetune/example_data/images",
        2,
        None,
    ),
    "lmms_text_only": (
        "lmms-finetune/example_data/single_image_has_text_only.json",
        "lmms-finetune/example_data/images",
        4,
        None,
    ),
    "lmms_multi_images": (
        "lmms-finetune/example_data/multi_images.json",
        "lmms-finetune/example_data/images",
        1,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(PREPARE_FLOWS))
def test_real_prepare_flow(realdata: Path, name: str) -> None:
    file, root, n_ok, first_size = PREPARE_FLOWS[name]
    dataset = load_dataset(realdata / file)
    assign_tasks(dataset)
    check_images(dataset, realdata / root, on_missing="skip")
    ok = [record for record in dataset.records if record.ok]
    assert len(ok) == n_ok
    for record in ok:
        assert len(record.image_paths) == len(record.images)
        assert all(path is not None and path.is_file() for path in record.image_paths)
        root_dir = (realdata / root).resolve()
        assert all(path.is_relative_to(root_dir) for path in record.image_paths)  # type: ignore[union-attr]
        opened = open_images(record)
        assert len(opened) == len(record.images)
        assert all(image.mode == "RGB" for image in opened)
    if first_size is not None:
        assert open_images(ok[0])[0].size == first_size
    if name == "lmms_multi_images":
        # soccer1.jpg is really PNG and soccer2.jpg really WebP: both open; post1..4.png do not ship.
        assert [path.name for path in ok[0].image_paths] == ["soccer1.jpg", "soccer2.jpg"]  # type: ignore[union-attr]
        assert dataset.records[1].status.startswith("skipped: missing image")


def test_real_v1_wrong_root_names_the_content_part(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/v1_multimodal_demo.jsonl")
    with pytest.raises(DataError) as info:
        check_images(dataset, realdata / "LLaMA-Factory/data")  # its paths start with data/
    assert info.value.index == 0
    assert info.value.field == "messages[0].content[0].value"
    assert "not found" in str(info.value)


def test_real_v1_subset_lines_unchanged(realdata: Path, tmp_path: Path) -> None:
    path = realdata / "LLaMA-Factory/data/v1_multimodal_demo.jsonl"
    dataset = load_dataset(path)
    counts = [1 if i % 5 == 0 else 0 for i in range(24)]
    counts[1] = 2
    out = write_subset(dataset, counts, tmp_path)
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    expected = [line for line, count in zip(lines, counts) for _ in range(count)]
    assert out.name == "subset.jsonl"
    assert out.read_text(encoding="utf-8") == "".join(line + "\n" for line in expected)


def test_real_mllm_demo_subset_records_unchanged(realdata: Path, tmp_path: Path) -> None:
    path = realdata / "LLaMA-Factory/data/mllm_demo.json"
    dataset = load_dataset(path)
    out = write_subset(dataset, [0, 1, 0, 2, 0, 1], tmp_path)
    original = json.loads(path.read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8")) == [original[1], original[3], original[3], original[5]]


NOT_INSTRUCTION_DATA = {
    "data-juicer/demos/data/demo-dataset-images.jsonl": ("text", "Data-Juicer record"),
    "LLaVA/playground/data/coco2014_val_qa_eval/qa90_questions.jsonl": ("text", "without an instruction/answer"),
    "LLaVA/playground/data/coco2014_val_qa_eval/qa90_gpt4_answer.jsonl": ("text", "without an instruction/answer"),
    "LLaVA/llava/eval/table/caps_boxes_coco2014_val_80.jsonl": ("conversations", "'captions'"),
    "Visual-CoT/playground/data/eval/llava-bench-in-the-wild/context.jsonl": ("conversations", "'caption'"),
    "Visual-CoT/playground/data/eval/llava-bench-in-the-wild/questions.jsonl": ("text", "without an instruction"),
}


@pytest.mark.parametrize("name", sorted(NOT_INSTRUCTION_DATA))
def test_real_non_instruction_files_are_refused_clearly(realdata: Path, name: str) -> None:
    field, words = NOT_INSTRUCTION_DATA[name]
    with pytest.raises(DataError) as info:
        load_dataset(realdata / name)
    message = str(info.value)
    assert info.value.index == 0 and info.value.field == field
    assert Path(name).name in message and words in message
    assert "supported record shapes" in message and '"messages"' in message and '"conversations"' in message


# ----------------------------------------------------------------------------------------------------------------
# messages: text content and content parts


def test_sharegpt_images_without_placeholder_go_before_the_first_question(tmp_path: Path) -> None:
    record = chat(images=["a.png", "b.png"], system_prompt="Be brief.")
    parsed = load_dataset(write(tmp_path, [record], "json")).records[0]
    assert parsed.shape == "sharegpt"
    assert parsed.turns[0] == Turn("system", [text("Be brief.")])
    assert parsed.turns[1].content == [IMAGE, IMAGE, text("What is this?")]


def test_openai_parts_place_images_where_they_stand(tmp_path: Path) -> None:
    user = [
        {"type": "text", "text": "Compare "},
        {"type": "image_url", "image_url": {"url": "a.png", "detail": "low"}},
        {"type": "text", "text": " with "},
        {"type": "image_url", "image_url": "sub/b.png"},
        {"type": "image", "image": "c.png"},
        {"type": "image_url", "value": "d.png"},
    ]
    record = chat(user, [{"type": "text", "text": "Same."}], id="r")
    parsed = load_dataset(write(tmp_path, [record], "jsonl")).records[0]
    assert parsed.shape == "openai"
    assert parsed.images == ["a.png", "sub/b.png", "c.png", "d.png"]
    assert parsed.image_fields == [
        "messages[0].content[1].image_url",
        "messages[0].content[3].image_url",
        "messages[0].content[4].image",
        "messages[0].content[5].value",
    ]
    assert parsed.turns[0].content == [text("Compare "), IMAGE, text(" with "), IMAGE, IMAGE, IMAGE]
    assert parsed.turns[1].content == [text("Same.")]


def test_bare_image_parts_refer_to_the_images_list(tmp_path: Path) -> None:
    # The Hugging Face / TRL vision convention; Arrow fills the unused keys with nulls.
    user = [
        {"type": "image", "text": None},
        {"type": "text", "text": "Which is bigger?", "image": None},
        {"type": "image_url", "image_url": {"url": "inline.png"}},
        {"type": "image", "text": None},
    ]
    parsed = load_dataset(write(tmp_path, [chat(user, images=["first.png", "second.png"])], "json")).records[0]
    assert parsed.images == ["first.png", "inline.png", "second.png"]
    assert parsed.image_fields == ["images", "messages[0].content[2].image_url", "images"]
    assert parsed.turns[0].content == [IMAGE, text("Which is bigger?"), IMAGE, IMAGE]


def test_system_message_and_roles(tmp_path: Path) -> None:
    record = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You help."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        "system": None,
    }
    parsed = load_dataset(write(tmp_path, [record], "json")).records[0]
    assert [turn.role for turn in parsed.turns] == ["system", "user", "assistant"]
    assert parsed.turns[0].content == [text("You help.")]
    # LLaMA-Factory's `system` column becomes a leading system turn like lmms-finetune's `system_prompt`.
    parsed = load_dataset(write(tmp_path, [chat(system="Be kind.")], "json")).records[0]
    assert parsed.turns[0] == Turn("system", [text("Be kind.")])


def test_data_url_is_decoded_to_embedded_bytes(tmp_path: Path) -> None:
    data = png_bytes("blue", (5, 4))
    user = [{"type": "image_url", "image_url": {"url": data_url(data)}}, {"type": "text", "text": "Colour?"}]
    dataset = load_dataset(write(tmp_path, [chat(user, "Blue.")], "jsonl"))
    record = dataset.records[0]
    assert record.images == [f"data:image/png ({len(data)} bytes)"]
    embedded = record.image_data[0]
    assert isinstance(embedded, EmbeddedImage) and embedded.read() == data
    check_images(dataset, None)  # embedded images need no image root
    assert record.ok and record.image_paths == [None]
    (image,) = open_images(record)
    assert image.size == (5, 4) and image.getpixel((0, 0)) == (0, 0, 255)


def test_broken_data_url_image_is_unreadable(tmp_path: Path) -> None:
    user = [{"type": "image_url", "image_url": {"url": data_url(b"not an image")}}, {"type": "text", "text": "Q"}]
    dataset = load_dataset(write(tmp_path, [chat(user, id="x")], "json"))
    with pytest.raises(DataError) as info:
        check_images(dataset, None)
    assert info.value.field == "messages[0].content[0].image_url"
    assert "embedded image" in str(info.value) and "not a readable image" in str(info.value)
    check_images(dataset, None, on_missing="skip")
    assert dataset.records[0].status.startswith("skipped: unreadable embedded image data:image/png")


def test_remote_url_is_an_error_or_skipped_never_fetched(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "a.png")
    url = "https://example.invalid/cat.jpg"
    records = [
        chat([{"type": "image_url", "image_url": {"url": "a.png"}}, {"type": "text", "text": "Q"}], id="local"),
        chat([{"type": "text", "text": "Q"}, {"type": "image_url", "image_url": {"url": url}}], id="remote"),
    ]
    dataset = load_dataset(write(tmp_path, records, "json"))
    with pytest.raises(DataError) as info:
        check_images(dataset, root)
    assert (info.value.index, info.value.record_id) == (1, "remote")
    assert info.value.field == "messages[0].content[1].image_url"
    assert "remote URL" in str(info.value) and "--on-bad-record skip" in str(info.value)
    check_images(dataset, root, on_missing="skip")
    assert dataset.records[0].ok
    assert dataset.records[1].status == f"skipped: remote image {url} (not fetched offline)"


def test_remote_only_dataset_needs_no_root(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [chat("<image>Q", images=["http://host/x.png"])], "json"))
    check_images(dataset, None, on_missing="skip")
    assert dataset.records[0].status.startswith("skipped: remote image http://host/x.png")


def test_file_url_is_a_path_confined_to_the_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "a b.png")
    inside = (root / "a b.png").resolve().as_uri()
    outside = (tmp_path / "x.png").resolve().as_uri()
    dataset = load_dataset(write(tmp_path, [chat("<image>Q", images=[inside])], "json"))
    check_images(dataset, root)
    assert dataset.records[0].image_paths == [(root / "a b.png").resolve()]
    dataset = load_dataset(write(tmp_path, [chat("<image>Q", images=[outside])], "json"))
    with pytest.raises(DataError, match="outside the image directory"):
        check_images(dataset, root)


def test_mixed_shapes_in_one_jsonl_file_are_written_back_unchanged(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": 0, "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
        json.dumps(chat("Q", "A", id=1)),
        json.dumps(chat([{"type": "text", "text": "Q"}], [{"type": "text", "text": "A"}], id=2)),
        json.dumps({"id": 3, "instruction": "Q", "input": "more", "output": "A"}, separators=(",", ":")),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = load_dataset(path)
    assert [record.shape for record in dataset.records] == ["llava", "sharegpt", "openai", "instruction"]
    assert dataset.records[3].turns[0].content == [text("Q\nmore")]
    assert all(record.turns == dataset.records[0].turns for record in dataset.records[1:3])
    out = write_subset(dataset, [0, 1, 1, 2], tmp_path / "out")
    assert out.read_text(encoding="utf-8") == lines[1] + "\n" + lines[2] + "\n" + lines[3] + "\n" + lines[3] + "\n"


def test_instruction_history_and_images(tmp_path: Path) -> None:
    record = {
        "instruction": "And now?",
        "output": "Blue.",
        "history": [["<image>What colour?", "Red."]],
        "images": ["a.png"],
        "system_prompt": "Short answers.",
    }
    parsed = load_dataset(write(tmp_path, [record], "json")).records[0]
    assert [turn.role for turn in parsed.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert parsed.turns[1].content == [IMAGE, text("What colour?")]
    assert parsed.turns[3].content == [text("And now?")]


def test_resolve_image_paths_and_open_images_need_resolution(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (3, 2), "green").save(root / "a.png")
    data = png_bytes("red", (2, 2))
    user = [{"type": "image_url", "image_url": {"url": "a.png"}}, {"type": "image_url", "image_url": data_url(data)}]
    dataset = load_dataset(write(tmp_path, [chat(user)], "json"))
    record = dataset.records[0]
    with pytest.raises(TiveError, match="no resolved path"):
        open_images(record)
    resolve_image_paths(dataset, root)  # what a later stage does: no image is opened
    assert record.image_paths == [(root / "a.png").resolve(), None]
    assert [image.size for image in open_images(record)] == [(3, 2), (2, 2)]
    with pytest.raises(TiveError, match="--images"):
        resolve_image_paths(dataset, None)


# ----------------------------------------------------------------------------------------------------------------
# Bad records of the new shapes: the error names the field


BAD_RECORDS = {
    "messages not a list": ({"messages": "hi"}, "messages"),
    "messages empty": ({"messages": []}, "messages"),
    "message not an object": ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, "messages[0]"),
    "missing role": ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role"),
    "unknown role": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]},
        "messages[1].role",
    ),
    "content a number": (chat("hi", 3), "messages[1].content"),
    "content null": (chat("hi", None), "messages[1].content"),
    "content missing": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
        "messages[1].content",
    ),
    "part not an object": (chat(["hi"]), "messages[0].content[0]"),
    "part without type": (chat([{"text": "hi"}]), "messages[0].content[0].type"),
    "unsupported part type": (chat([{"type": "video", "video": "v.mp4"}]), "messages[0].content[0].type"),
    "text part without text": (
        chat([{"type": "image", "image": "a.png"}, {"type": "text"}]),
        "messages[0].content[1].text",
    ),
    "text part not a string": (chat([{"type": "text", "text": ["hi"]}]), "messages[0].content[0].text"),
    "image_url part without url": (
        chat([{"type": "image_url"}, {"type": "text", "text": "Q"}]),
        "messages[0].content[0].image_url",
    ),
    "image_url object without url": (
        chat([{"type": "image_url", "image_url": {"detail": "low"}}]),
        "messages[0].content[0].image_url",
    ),
    "image_url a number": (chat([{"type": "image_url", "image_url": 7}]), "messages[0].content[0].image_url"),
    "invalid base64 data URL": (
        chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
        "messages[0].content[0].image_url",
    ),
    "data URL without comma": (
        chat([{"type": "image", "image": "data:image/png;base64"}]),
        "messages[0].content[0].image",
    ),
    "images a number": (chat("<image>Q", images=3), "images"),
    "images item not a string": (chat("<image>Q", images=[5]), "images"),
    "images item empty": (chat("<image>Q", images=[""]), "images"),
    "both image and images": (chat("<image>Q", image="a.png", images=["a.png"]), "images"),
    "placeholders without images": (chat("<image>Q"), "messages"),
    "more placeholders than images": (chat("<image><image>Q", images=["a.png"]), "messages"),
    "bare image part without images": (chat([{"type": "image"}, {"type": "text", "text": "Q"}]), "messages"),
    "no assistant answer": ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    "empty assistant answer": (chat("hi", [{"type": "text", "text": " "}]), "messages"),
    "both conversations and messages": (chat(conversations=[{"from": "human", "value": "x"}]), "messages"),
    "system not a string": (chat(system=["x"]), "system"),
    "system and system_prompt": (chat(system="a", system_prompt="b"), "system"),
    "id not a scalar": (chat(id=[1]), "id"),
    "instruction without output": ({"instruction": "Q"}, "output"),
    "output without instruction": ({"output": "A"}, "instruction"),
    "instruction not a string": ({"instruction": 1, "output": "A"}, "instruction"),
    "output empty": ({"instruction": "Q", "output": ""}, "output"),
    "input not a string": ({"instruction": "Q", "input": 1, "output": "A"}, "input"),
    "history not pairs": ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "history[0]"),
    "instruction image mismatch": ({"instruction": "<image>Q", "output": "A"}, "instruction"),
    "text-only non-instruction record": ({"text": "<__dj__image> a bus", "images": ["a.png"]}, "text"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_bad_record_names_its_field(kind: str, container: str, tmp_path: Path) -> None:
    bad, field = BAD_RECORDS[kind]
    bad = dict(bad)
    bad.setdefault("id", "bad-7")
    good = [chat("<image>Q", images=["a.png"], id="a"), {"instruction": "Q", "output": "A", "id": "b"}]
    path = write(tmp_path, good + [bad], container, name="broken_input")
    with pytest.raises(DataError) as info:
        load_dataset(path)
    error = info.value
    message = str(error)
    assert "broken_input" in message and "record 2" in message
    assert error.index == 2
    assert error.field == field, message
    assert f"field {field!r}" in message
    if kind != "id not a scalar":
        assert "'bad-7'" in message
    assert error.hint
