"""Reading LLaVA JSON/JSONL into records, validation errors, and writing subsets back unchanged."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tive.data import Dataset, Record, Turn, load_dataset, write_subset
from tive.data.formats import parse_llava_record
from tive.errors import DataError, TiveError

IMAGE = {"type": "image"}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def llava(question: str = "<image>\nWhat is this?", answer: str = "A cat.", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict(fields)
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


def parse(raw: dict[str, Any]) -> Record:
    return parse_llava_record(raw, 0, Path("x.json"))


# ----------------------------------------------------------------------------------------------------------------
# Real files


VISCOT_COUNTS = {
    "cub.json": 492,
    "docvqa.json": 888,
    "dude.json": 603,
    "emotic.json": 656,
    "flickr30k.json": 1546,
    "gqa.json": 978,
    "infographicsvqa.json": 360,
    "openimages.json": 945,
    "sroie.json": 686,
    "textcap.json": 853,
    "textvqa.json": 526,
    "visual7w.json": 1000,
    "vsr.json": 404,
}


def test_real_llava_instruct_100(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/llava_instruct_100.json")
    assert dataset.format == "json"
    assert dataset.raw_lines is None
    assert len(dataset.records) == 100
    assert [record.index for record in dataset.records] == list(range(100))
    first = dataset.records[0]
    assert first.record_id == "000000379143"
    assert first.images == ["000000379143.jpg"]
    # "<image>" follows the question after a newline in this record.
    assert first.turns[0].content == [text("What is the man doing in the back of the pickup truck?"), IMAGE]
    assert first.turns[1].role == "assistant"
    for record in dataset.records:
        parts = [part for turn in record.turns for part in turn.content]
        assert parts.count(IMAGE) == 1
        assert all("<image>" not in turn.text() for turn in record.turns)
        assert {turn.role for turn in record.turns} == {"user", "assistant"}
    # About half the records put <image> first, the others after the question.
    leading = sum(record.turns[0].content[0] == IMAGE for record in dataset.records)
    assert 20 < leading < 80


def test_real_visual_cot(realdata: Path) -> None:
    folder = realdata / "Visual-CoT/viscot_benchmark/benchmark"
    counts = {path.name: len(load_dataset(path).records) for path in sorted(folder.glob("*.json"))}
    assert counts == VISCOT_COUNTS
    assert sum(counts.values()) == 9937

    record = load_dataset(folder / "gqa.json").records[0]
    assert record.record_id is None
    # Paths are kept exactly as written, including the "###[box]" suffix of the second one.
    assert record.images == ["cot/gqa/2316539.jpg", "cot/gqa/2316539.jpg###[217, 343, 242, 393]"]
    assert record.turns[0].content[0] == IMAGE
    assert record.turns[0].content[1]["text"].startswith("What are the tree branches in front of?")
    assert record.turns[2].content == [IMAGE]
    assert [turn.role for turn in record.turns] == ["user", "assistant", "user", "assistant"]


def test_real_qwen_demo_has_no_id(realdata: Path) -> None:
    dataset = load_dataset(realdata / "Qwen3-VL/qwen-vl-finetune/demo/single_images.json")
    assert len(dataset.records) == 3
    assert [record.record_id for record in dataset.records] == [None, None, None]
    assert dataset.records[0].images == ["demo/images/10095.png"]
    assert dataset.records[0].turns[0].content == [text("Is the value of Favorable 38 in 2015?"), IMAGE]


def test_real_lmms_finetune(realdata: Path) -> None:
    folder = realdata / "lmms-finetune/example_data"
    counts = {path.name: len(load_dataset(path).records) for path in sorted(folder.glob("*.json"))}
    assert counts == {"multi_images.json": 2, "single_image.json": 2, "single_image_has_text_only.json": 4}

    multi = load_dataset(folder / "multi_images.json").records
    assert multi[0].turns[0] == Turn("system", [text("Answer the following questions by considering all images.")])
    question = "Which image has more people? Give details to your answer."
    assert multi[0].turns[1].content == [IMAGE, IMAGE, text(question)]
    assert multi[1].turns[1].content == [
        text("Help me write a Twitter post considering the following images."),
        IMAGE,
        IMAGE,
        IMAGE,
        IMAGE,
    ]
    assert multi[1].images == ["post1.png", "post2.png", "post3.png", "post4.png"]

    mixed = load_dataset(folder / "single_image_has_text_only.json").records
    assert [len(record.images) for record in mixed] == [1, 1, 0, 0]
    assert mixed[1].turns[0].role == "user"  # no system_prompt: no system turn
    assert mixed[2].turns[0].content == [text("What is the capital of France?")]


def test_real_fastchat_text_only(realdata: Path) -> None:
    dataset = load_dataset(realdata / "FastChat/data/dummy_conversation.json")
    assert len(dataset.records) == 500
    assert all(record.images == [] for record in dataset.records)
    assert dataset.records[0].record_id == "identity_0"
    assert dataset.records[0].first_instruction() == "Who are you?"


# ----------------------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("<image>\nWhat is this?", [IMAGE, text("What is this?")]),
        ("What is this?\n<image>", [text("What is this?"), IMAGE]),
        ("<image>What is this?", [IMAGE, text("What is this?")]),
        ("<image>\r\nWhat?", [IMAGE, text("What?")]),
        ("Compare <image> and <image> please.", [text("Compare "), IMAGE, text(" and "), IMAGE, text(" please.")]),
        ("<image>\n<image>\nWhich?", [IMAGE, IMAGE, text("Which?")]),
        ("<image>\n\nTwo newlines", [IMAGE, text("\nTwo newlines")]),
    ],
)
def test_placeholders_become_image_parts(value: str, content: list[dict[str, Any]]) -> None:
    n_images = value.count("<image>")
    record = parse(llava(value, image=[f"{i}.jpg" for i in range(n_images)]))
    assert record.turns[0].content == content


def test_placeholder_alone_is_an_image_only_turn() -> None:
    record = parse(llava("<image>", image="a.jpg"))
    assert record.turns[0].content == [IMAGE]


def test_images_without_placeholder_go_to_the_start_of_the_first_user_turn() -> None:
    raw = {
        "image": ["a.jpg", "b.jpg"],
        "system_prompt": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Describe both."},
            {"from": "gpt", "value": "Two cats."},
            {"from": "human", "value": "More?"},
            {"from": "gpt", "value": "No."},
        ],
    }
    record = parse(raw)
    assert record.turns[0] == Turn("system", [text("Be brief.")])
    assert record.turns[1].content == [IMAGE, IMAGE, text("Describe both.")]
    assert record.turns[3].content == [text("More?")]


def test_roles_are_normalised() -> None:
    raw = {
        "conversations": [
            {"from": "system", "value": "You help."},
            {"from": "user", "value": "Hi"},
            {"from": "assistant", "value": "Hello"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Bye"},
        ]
    }
    record = parse(raw)
    assert [turn.role for turn in record.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert record.images == [] and record.record_id is None


def test_numeric_id_and_raw_untouched() -> None:
    raw = llava(id=42, image="a.jpg", extra={"keep": [1, 2]})
    before = copy.deepcopy(raw)
    record = parse(raw)
    assert record.record_id == 42
    assert record.raw is raw
    assert raw == before


# ----------------------------------------------------------------------------------------------------------------
# Bad records: every kind names the file, the record (index and id) and the field


def _turns(*turns: Any) -> list[Any]:
    return list(turns)


BAD_RECORDS = {
    "missing conversations": ({"image": "a.jpg"}, "conversations"),
    "conversations not a list": ({"conversations": {"from": "human"}}, "conversations"),
    "conversations empty": ({"conversations": []}, "conversations"),
    "turn not an object": ({"conversations": ["hello", {"from": "gpt", "value": "x"}]}, "conversations[0]"),
    "missing from": ({"conversations": [{"value": "hi"}, {"from": "gpt", "value": "x"}]}, "conversations[0].from"),
    "non-string from": (
        {"conversations": [{"from": 1, "value": "hi"}, {"from": "gpt", "value": "x"}]},
        "conversations[0].from",
    ),
    "unknown role": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]},
        "conversations[1].from",
    ),
    "missing value": ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "conversations[0].value"),
    "non-string value": (
        {"conversations": [{"from": "human", "value": ["hi"]}, {"from": "gpt", "value": "x"}]},
        "conversations[0].value",
    ),
    "no assistant turn": ({"conversations": [{"from": "human", "value": "hi"}]}, "conversations"),
    "only empty answers": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]},
        "conversations",
    ),
    "image is a number": (llava(image=3), "image"),
    "image list with a non-string": (llava(image=["a.jpg", 5]), "image"),
    "image empty string": (llava(image=""), "image"),
    "more placeholders than images": (llava("<image><image>\nBoth?", image=["a.jpg"]), "conversations"),
    "placeholder without image": (llava("<image>\nWhat?"), "conversations"),
    "fewer placeholders than images": (llava("<image>\nWhat?", image=["a.jpg", "b.jpg", "c.jpg"]), "conversations"),
    "system_prompt not a string": (llava(image="a.jpg", system_prompt=["x"]), "system_prompt"),
    "id not a scalar": (llava(image="a.jpg", id={"a": 1}), "id"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_bad_record_gives_a_clear_data_error(kind: str, container: str, tmp_path: Path) -> None:
    bad, field = BAD_RECORDS[kind]
    bad = dict(bad)
    bad.setdefault("id", "bad-7")
    records = [llava(id="a", image="a.jpg"), llava("Hi", id="b"), bad]
    path = tmp_path / f"broken_input.{container}"
    if container == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")

    with pytest.raises(DataError) as info:
        load_dataset(path)
    error = info.value
    message = str(error)
    assert "broken_input" in message
    assert "record 2" in message
    assert error.index == 2
    assert error.field == field
    assert f"field {field!r}" in message
    if kind != "id not a scalar":
        assert "'bad-7'" in message
    assert error.hint  # says what to do
    assert "Traceback" not in message


def test_placeholder_mismatch_message_gives_counts(write_json: Any) -> None:
    path = write_json([llava("<image><image>\nBoth?", id=1, image=["a.jpg"])])
    with pytest.raises(DataError, match=r"2 <image> placeholder\(s\) but 'image' lists 1"):
        load_dataset(path)


# ----------------------------------------------------------------------------------------------------------------
# File-level errors and format detection


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TiveError, match="not found"):
        load_dataset(tmp_path / "nope.json")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(TiveError, match="directory"):
        load_dataset(tmp_path)


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"conversations": []},\n  {"id": 1,, }\n]\n', encoding="utf-8")
    with pytest.raises(TiveError) as info:
        load_dataset(path)
    assert not isinstance(info.value, DataError)
    assert "bad.json" in str(info.value)
    assert "line 3 column 12" in str(info.value)


@pytest.mark.parametrize(
    ("content", "what"),
    [('{\n  "conversations": []\n}\n', "an object"), ('"hello"', "a string"), ("42", "a number")],
)
def test_top_level_not_a_list(tmp_path: Path, content: str, what: str) -> None:
    path = tmp_path / "top.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TiveError, match=f"top level is {what}, not a list"):
        load_dataset(path)


def test_jsonl_bad_line_gives_line_number_and_record_index(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(llava("Hi", id=0)), "", json.dumps(llava("Hi", id=1)), "  ", '{"id": 2, "conversations": [']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert info.value.index == 2  # blank lines do not count as records
    assert "line 5" in str(info.value)
    assert "record 2" in str(info.value)


@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_record_not_an_object(tmp_path: Path, container: str) -> None:
    path = tmp_path / f"data.{container}"
    good = llava("Hi", id=0)
    if container == "json":
        path.write_text(json.dumps([good, [1, 2]]), encoding="utf-8")
    else:
        path.write_text(json.dumps(good) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"record 1: the record is a list, not an object"):
        load_dataset(path)


@pytest.mark.parametrize("content", ["", "  \n\n", "[]", "[ ]\n"])
def test_empty_input(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TiveError, match="empty|no records"):
        load_dataset(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes('[{"conversations": [{"from": "human", "value": "caf\xe9"}]}]'.encode("latin-1"))
    with pytest.raises(TiveError, match="not UTF-8"):
        load_dataset(path)


def test_format_from_content_not_suffix(tmp_path: Path) -> None:
    records = [llava("Hi", id=0), llava("Ho", id=1)]
    as_jsonl = tmp_path / "really_lines.json"
    as_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    as_json = tmp_path / "really_list.jsonl"
    as_json.write_text("\n  " + json.dumps(records), encoding="utf-8")
    assert load_dataset(as_jsonl).format == "jsonl"
    assert load_dataset(as_json).format == "json"
    assert [r.record_id for r in load_dataset(as_json).records] == [0, 1]


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([llava("Hi")]).encode())
    assert len(load_dataset(path).records) == 1


def test_read_only_input_loads_and_stays_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ro.jsonl"
    path.write_text(json.dumps(llava("Hi", id=0)) + "\n", encoding="utf-8")
    path.chmod(0o444)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    try:
        assert len(load_dataset(path).records) == 1
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    finally:
        path.chmod(0o644)


# ----------------------------------------------------------------------------------------------------------------
# Writing subsets


def test_json_subset_equals_inputs_and_input_unchanged(write_json: Any, tmp_path: Path) -> None:
    records = [
        llava("<image>\nQ0", id=0, image="a.jpg", score=0.1),
        llava("Q1 中文", id=1),
        llava("Q2", id=2, nested={"k": [1, None, True]}),
        llava("Q3", id=3),
    ]
    path = write_json(records, name="input.json")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    dataset = load_dataset(path)

    out = write_subset(dataset, [1, 0, 3, 1], tmp_path / "out")
    assert out == tmp_path / "out" / "subset.json"
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == [records[0], records[2], records[2], records[2], records[3]]
    assert "中文" not in out.read_text(encoding="utf-8")  # record 1 not selected
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["subset.json"]  # no temporary left behind

    out = write_subset(dataset, [0, 1, 0, 0], tmp_path / "out")
    assert "中文" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    assert out.read_text(encoding="utf-8").startswith('[\n  {\n    "id": 1,')  # indent 2, key order kept


def test_jsonl_subset_lines_are_byte_identical(tmp_path: Path) -> None:
    lines = [
        '{"id": 0,   "conversations": [{"from": "human", "value": "Q0"}, {"from": "gpt", "value": "A"}]}',
        '{"id":1,"conversations":[{"from":"human","value":"x\u2028y \\u00e9 é"},{"from":"gpt","value":"A"}]}',
        '{"conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A"}], "id": 2.50}',
    ]
    path = tmp_path / "input.jsonl"
    path.write_bytes(("\n".join([lines[0], "", lines[1], "   ", lines[2]]) + "\n").encode("utf-8"))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    dataset = load_dataset(path)
    assert dataset.format == "jsonl"
    assert dataset.raw_lines == lines
    assert [record.index for record in dataset.records] == [0, 1, 2]

    out = write_subset(dataset, [2, 1, 0], tmp_path / "out")
    assert out.name == "subset.jsonl"
    expected = (lines[0] + "\n" + lines[0] + "\n" + lines[1] + "\n").encode("utf-8")
    assert out.read_bytes() == expected
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_jsonl_crlf_input(tmp_path: Path) -> None:
    line = json.dumps(llava("Hi", id=0))
    path = tmp_path / "crlf.jsonl"
    path.write_bytes((line + "\r\n" + line + "\r\n").encode())
    dataset = load_dataset(path)
    assert dataset.raw_lines == [line, line]
    assert write_subset(dataset, [0, 1], tmp_path / "o").read_bytes() == (line + "\n").encode()


def test_real_file_full_subset_round_trips(realdata: Path, tmp_path: Path) -> None:
    path = realdata / "LLaMA-Factory/data/llava_instruct_100.json"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    dataset = load_dataset(path)
    out = write_subset(dataset, [1] * 100, tmp_path)
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(before[0])
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_empty_subset_is_an_empty_list(write_json: Any, tmp_path: Path) -> None:
    dataset = load_dataset(write_json([llava("Hi")]))
    assert json.loads(write_subset(dataset, [0], tmp_path / "o").read_text()) == []


@pytest.mark.parametrize("counts", [[1], [1, 1, 1], [1, -1], [1, 1.0], [True, 0], [1, "2"]])
def test_bad_counts(write_json: Any, tmp_path: Path, counts: list[Any]) -> None:
    dataset = load_dataset(write_json([llava("Hi"), llava("Ho")]))
    with pytest.raises(ValueError):
        write_subset(dataset, counts, tmp_path / "o")
    assert not (tmp_path / "o" / "subset.json").exists()


def test_subset_never_overwrites_the_input(tmp_path: Path) -> None:
    path = tmp_path / "subset.json"
    path.write_text(json.dumps([llava("Hi")]), encoding="utf-8")
    before = path.read_bytes()
    dataset = load_dataset(path)
    with pytest.raises(TiveError, match="overwrite the input"):
        write_subset(dataset, [1], tmp_path)
    assert path.read_bytes() == before


def test_subset_file_permissions_follow_umask(write_json: Any, tmp_path: Path) -> None:
    dataset = load_dataset(write_json([llava("Hi")]))
    umask = os.umask(0o022)
    try:
        out = write_subset(dataset, [1], tmp_path / "o")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_dataset_dataclass_fields() -> None:
    dataset = Dataset(path=Path("x.json"), format="json", records=[], raw_lines=None)
    assert (dataset.path, dataset.format, dataset.records, dataset.raw_lines) == (Path("x.json"), "json", [], None)


def test_data_layer_imports_without_heavy_libraries() -> None:
    import subprocess
    import sys

    import tive

    code = (
        "import sys, tive.data; "
        "heavy = [m for m in ('numpy', 'torch', 'transformers', 'PIL', 'yaml', 'tqdm', 'pyarrow', 'datasets', "
        "'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    src = str(Path(tive.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


# ----------------------------------------------------------------------------------------------------------------
# Writing the subset straight from the input (what `tive select` does on a prepared run)


def test_subset_from_the_input_equals_the_subset_of_the_loaded_dataset(write_json: Any, tmp_path: Path) -> None:
    from tive.data.formats import write_subset_from_input

    records = [llava("<image>\nQ0", id=0, image="a.jpg"), llava("Q1 中文", id=1), llava("Q2", id=2, x=[1, {"y": None}])]
    as_json = write_json(records, name="input.json")
    as_jsonl = tmp_path / "input.jsonl"
    as_jsonl.write_bytes(("\r\n".join(json.dumps(r, indent=None) for r in records) + "\n\n").encode())
    pretty = tmp_path / "pretty.json"
    pretty.write_text("\ufeff  [\n" + ",\n\n".join(json.dumps(r, indent=4) for r in records) + "\n]\n", encoding="utf-8")
    for path in (as_json, as_jsonl, pretty):
        dataset = load_dataset(path)
        for counts in ([1, 0, 2], [0, 0, 0], [1, 1, 1]):
            loaded = write_subset(dataset, counts, tmp_path / "loaded").read_bytes()
            raw = write_subset_from_input(path, dataset.format, counts, tmp_path / "raw").read_bytes()
            assert raw == loaded, (path.name, counts)
        with pytest.raises(TiveError, match="holds 3 records, the selection has 2"):
            write_subset_from_input(path, dataset.format, [1, 1], tmp_path / "raw")


@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_json_nested_deeper_than_the_parser_can_go_is_named_not_a_traceback(container: str, tmp_path: Path) -> None:
    good = json.dumps(llava("Hi", id=0))
    deep = '{"id": "deep", "conversations": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tmp_path / f"deep.{container}"
    path.write_text(f"[{good}, {good}, {deep}]" if container == "json" else f"{good}\n{good}\n{deep}\n")
    before = path.read_bytes()
    with pytest.raises(TiveError, match=r"deep\.json.*record 2.*nested too deeply"):
        load_dataset(path)
    assert path.read_bytes() == before


def test_atomic_writes_follow_any_umask_without_changing_it(tmp_path: Path) -> None:
    from tive.io import _umask, write_text

    previous = os.umask(0o027)
    try:
        assert _umask() == 0o027
        write_text(tmp_path / "a.txt", "x")
        assert os.umask(0o027) == 0o027  # reading the mask left it as it was
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
