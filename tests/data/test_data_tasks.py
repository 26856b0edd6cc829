"""Task assignment: from a field, from rules (file or the built-in llava665k set), or one task for all."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tive.data import assign_tasks, load_dataset
from tive.data.tasks import load_task_rules
from tive.errors import DataError, TiveError

VQA_PROMPT = "Answer the question using a single word or phrase."
MC_PROMPT = "Answer with the option's letter from the given choices directly."


def record(question: str, image: str | None = None, answer: str = "Yes", **fields: Any) -> dict[str, Any]:
    """A record shaped like the LLaVA-1.5 665K mix (first turn of a multi-turn conversation)."""
    raw: dict[str, Any] = dict(fields)
    if image is not None:
        raw["image"] = image
    raw["conversations"] = [
        {"from": "human", "value": question},
        {"from": "gpt", "value": answer},
        {"from": "human", "value": "And the other one?"},
        {"from": "gpt", "value": "No"},
    ]
    return raw


# (expected task, record) pairs, one or more per 665K source, written as they appear in llava_v1_5_mix665k.json.
MIX_665K = [
    ("sharegpt", record("Summarize the following text about climate change ...", id="i6IyJda_0", model="")),
    (
        "llava_instruct",
        record(
            "What are the colors of the bus in the image?\n<image>",
            "coco/train2017/000000033471.jpg",
            id="000000033471",
        ),
    ),
    (
        "llava_instruct",
        record("<image>\nWhat is the man doing in the image?", "coco/train2017/000000052846.jpg", id="000000052846"),
    ),
    (
        "vqav2_okvqa",  # VQAv2
        record(
            f"<image>\nWhat is this photo taken looking through?\n{VQA_PROMPT}",
            "coco/train2017/000000458752.jpg",
            id="458752",
        ),
    ),
    (
        "vqav2_okvqa",  # OKVQA: same prompt, same images
        record(
            f"<image>\nWhat sport can you use this for?\n{VQA_PROMPT}", "coco/train2017/000000051606.jpg", id="51606"
        ),
    ),
    (
        "a_okvqa",
        record(
            "<image>\nWhat is the man by the bags awaiting?\nA. skateboarder\nB. train\nC. delivery\nD. cab\n"
            + MC_PROMPT,
            "coco/train2017/000000461751.jpg",
            answer="D",
            id="22jbM6gDxdaMaunuzgrsBB",
        ),
    ),
    (
        "refcoco",
        record(
            "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: "
            "woman in red.",
            "coco/train2017/000000580837.jpg",
            answer="[0.24, 0.17, 0.53, 0.98]",
            id="refcoco_1",
        ),
    ),
    (
        "refcoco",
        record(
            "<image>\nPlease provide a short description for this region: [0.24, 0.17, 0.53, 0.98]",
            "coco/train2017/000000580837.jpg",
            answer="Woman in red.",
            id="refcoco_2",
        ),
    ),
    (
        "ocr_vqa",
        record(f"<image>\nWho wrote this book?\n{VQA_PROMPT}", "ocr_vqa/images/140031996.jpg", id="140031996"),
    ),
    (
        "gqa",
        record(f"<image>\nIs the sky dark?\n{VQA_PROMPT}", "gqa/images/2354786.jpg", id="2354786"),
    ),
    (
        "textcaps",
        record(
            "<image>\nProvide a one-sentence caption for the provided image.\nReference OCR token: NIKON",
            "textvqa/train_images/011e7e629fb9ae7b.jpg",
            id="011e7e629fb9ae7b",
        ),
    ),
    (
        "vg",  # the RefCOCO prompts on vg/ images are Visual Genome
        record(
            "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: a cat.",
            "vg/VG_100K_2/2385244.jpg",
            id="vg_1",
        ),
    ),
    (
        "vg",
        record("<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.3, 0.4]", "vg/VG_100K/1.jpg"),
    ),
    # Prefixed paths: the folder may follow a slash anywhere.
    ("gqa", record(f"<image>\nIs it red?\n{VQA_PROMPT}", "/data/llava/playground/gqa/images/1.jpg")),
    ("ocr_vqa", record(f"<image>\nWho?\n{VQA_PROMPT}", "./ocr_vqa/images/2.jpg")),
    ("textcaps", record("<image>\nProvide a caption.", "playground/data/textvqa/train_images/3.jpg")),
    ("vqav2_okvqa", record(f"<image>\nWhat?\n{VQA_PROMPT}", "/mnt/data/coco/train2017/4.jpg")),
    # A folder name only as part of another name does not count.
    ("llava_instruct", record("<image>\nDescribe the image.", "coco/train2017/my_gqa/vg_5.jpg")),
]


def write(tmp_path: Path, records: list[dict[str, Any]], name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_llava665k_recovers_every_source(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [raw for _, raw in MIX_665K]))
    message = assign_tasks(dataset, task_rules="llava665k")
    got = [(expected, record.task) for (expected, _), record in zip(MIX_665K, dataset.records)]
    assert all(expected == task for expected, task in got), got
    assert message == "tasks from rules built-in 'llava665k': 9 tasks"


def test_llava665k_on_real_llava_instruct(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/llava_instruct_100.json")
    assign_tasks(dataset, task_rules="llava665k")
    assert Counter(record.task for record in dataset.records) == {"llava_instruct": 100}


def test_llava665k_on_real_text_only(realdata: Path) -> None:
    dataset = load_dataset(realdata / "FastChat/data/dummy_conversation.json")
    assign_tasks(dataset, task_rules="llava665k")
    assert Counter(record.task for record in dataset.records) == {"sharegpt": 500}


def test_builtin_rules_ship_with_the_package() -> None:
    rules, source = load_task_rules("llava665k")
    assert source == "built-in 'llava665k'"
    assert [rule.task for rule in rules][-1] == "llava_instruct"
    assert rules[-1].image is None and rules[-1].instruction is None and rules[-1].has_image is None


# ----------------------------------------------------------------------------------------------------------------
# Task field


def test_task_field_on_real_visual_cot(realdata: Path, tmp_path: Path) -> None:
    folder = realdata / "Visual-CoT/viscot_benchmark/benchmark"
    lines = []
    for path in sorted(folder.glob("*.json")):
        lines += [json.dumps(raw, ensure_ascii=False) for raw in json.loads(path.read_text(encoding="utf-8"))]
    merged = tmp_path / "viscot_all.jsonl"
    merged.write_text("\n".join(lines) + "\n", encoding="utf-8")

    dataset = load_dataset(merged)
    message = assign_tasks(dataset, task_field="dataset")
    assert message == "tasks from field 'dataset': 13 tasks"
    counts = Counter(record.task for record in dataset.records)
    assert sum(counts.values()) == 9937
    assert counts["v7w"] == 1000 and counts["flickr30k"] == 1546 and counts["gqa"] == 978
    assert set(counts) == {
        "cub", "docvqa", "dude", "emotic", "flickr30k", "gqa", "infographicsvqa",
        "openimages", "sroie", "textcap", "textvqa", "v7w", "vsr",
    }  # fmt: skip


def test_task_field_integers_are_converted(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [record("Q", source=3), record("Q", source="web")]))
    assert assign_tasks(dataset, task_field="source") == "tasks from field 'source': 2 tasks"
    assert [r.task for r in dataset.records] == ["3", "web"]


@pytest.mark.parametrize("value", [None, "", "   ", ["a"], 1.5, True, {"a": 1}])
def test_task_field_wrong_type(tmp_path: Path, value: Any) -> None:
    dataset = load_dataset(write(tmp_path, [record("Q", source="a", id="x"), record("Q", source=value, id="y")]))
    with pytest.raises(DataError) as info:
        assign_tasks(dataset, task_field="source")
    message = str(info.value)
    assert "data.json" in message and "record 1" in message and "'y'" in message and "field 'source'" in message


def test_task_field_missing_lists_the_fields(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [record("Q", id="x", dataset="a", split="val")]))
    with pytest.raises(DataError) as info:
        assign_tasks(dataset, task_field="source")
    message = str(info.value)
    assert "record 0" in message and "'x'" in message and "field 'source'" in message
    assert "'dataset'" in message and "'split'" in message and "'conversations'" in message


# ----------------------------------------------------------------------------------------------------------------
# None / both


def test_no_option_gives_one_task(realdata: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/llava_instruct_100.json")
    message = assign_tasks(dataset)
    assert message == "no --task-field or --task-rules: all 100 records form one task 'all'"
    assert {record.task for record in dataset.records} == {"all"}


def test_both_options_refused(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [record("Q", source="a")]))
    with pytest.raises(TiveError, match="not both"):
        assign_tasks(dataset, task_field="source", task_rules="llava665k")


# ----------------------------------------------------------------------------------------------------------------
# Rules files


RULES = """
rules:
  - task: text
    has_image: false
  - task: charts
    image: '(^|/)charts/'
  - task: counting
    instruction: '(?i)^how many'
  - task: charts_counting   # never reached for chart images: the first matching rule wins
    image: 'charts'
    instruction: 'How many'
  - task: both
    image: '\\.png$'
    instruction: 'Describe'
  - task: other
"""


def test_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "my_rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    records = [
        record("Hello"),
        record("<image>\nHow many bars?", "charts/1.jpg"),
        record("<image>\nhow many dogs?", "photos/1.jpg"),
        record("<image>\nDescribe it.", "photos/2.png"),
        record("<image>\nDescribe it.", "photos/3.jpg"),
        record("<image><image>\nDescribe both.", ["photos/4.jpg", "more/5.png"]),
    ]
    dataset = load_dataset(write(tmp_path, records))
    message = assign_tasks(dataset, task_rules=str(rules))
    assert [r.task for r in dataset.records] == ["text", "charts", "counting", "both", "other", "both"]
    assert "my_rules.yaml" in message and "5 tasks" in message


def test_no_matching_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - task: text\n    has_image: false\n", encoding="utf-8")
    dataset = load_dataset(write(tmp_path, [record("Q"), record("<image>\nQ", "a.jpg", id="img")]))
    with pytest.raises(DataError) as info:
        assign_tasks(dataset, task_rules=str(rules))
    message = str(info.value)
    assert "record 1" in message and "'img'" in message and "field 'task'" in message
    assert "catch-all" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n  - task", "not valid YAML"),
        ("- task: a\n", "'rules' list"),
        ("rules: []\n", "non-empty list"),
        ("rules:\n  - task: a\nversion: 2\n", "unknown top-level key"),
        ("rules:\n  - task: a\n  - task: b\n    images: 'x'\n", "rule 2: unknown key"),
        ("rules:\n  - task: a\n    image: '(unclosed'\n", "rule 1: invalid 'image' regex"),
        ("rules:\n  - task: a\n  - task: b\n  - instruction: 'x'\n", "rule 3: missing 'task'"),
        ("rules:\n  - task: a\n    has_image: 'yes please'\n", "rule 1: 'has_image' must be true or false"),
        ("rules:\n  - task: a\n    instruction: 5\n", "rule 1: 'instruction' must be a regex string"),
        ("rules:\n  - just a string\n", "rule 1: a rule must be a mapping"),
    ],
)
def test_invalid_rules_files(tmp_path: Path, text: str, expected: str) -> None:
    rules = tmp_path / "bad_rules.yaml"
    rules.write_text(text, encoding="utf-8")
    dataset = load_dataset(write(tmp_path, [record("Q")]))
    with pytest.raises(TiveError) as info:
        assign_tasks(dataset, task_rules=str(rules))
    assert not isinstance(info.value, DataError)
    assert "bad_rules.yaml" in str(info.value)
    assert expected in str(info.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, [record("Q")]))
    with pytest.raises(TiveError, match="not found.*llava665k"):
        assign_tasks(dataset, task_rules=str(tmp_path / "nope.yaml"))
