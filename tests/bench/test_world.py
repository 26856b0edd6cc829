"""The built-in world: deterministic from its seed, in the format a user would give, held-out benchmarks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from tive.bench.evalsets import load_benchmarks
from tive.bench.metrics import METRICS, parse_box, option_letter
from tive.bench.world import BENCHMARKS, WORLD_TASKS, WorldSizes, write_world
from tive.data import assign_tasks, check_images, load_dataset
from tive.errors import TiveError

SIZES = WorldSizes(train=300, align=40, eval=12, prior=30)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_world(tmp_path_factory.mktemp("world") / "w", seed=3, sizes=SIZES)


def test_same_seed_same_bytes_other_seed_differs(world: dict, tmp_path: Path) -> None:
    again = write_world(tmp_path / "again", seed=3, sizes=SIZES)
    other = write_world(tmp_path / "other", seed=4, sizes=SIZES)
    first = Path(world["train"]).parent
    assert _digest(first) == _digest(Path(again["train"]).parent)
    assert Path(first / "train.json").read_bytes() != Path(other["train"]).read_bytes()


def test_train_is_a_llava_mix_with_a_task_field(world: dict) -> None:
    dataset = load_dataset(world["train"])
    assert len(dataset.records) == SIZES.train
    assign_tasks(dataset, task_field="dataset")
    check_images(dataset, world["images"])
    tasks = Counter(record.task for record in dataset.records)
    assert set(tasks) == {t.name for t in WORLD_TASKS}
    assert 8 <= len(tasks) <= 10
    assert tasks.most_common(1)[0][0] == "llava_instruct"  # imbalanced like LLaVA-665K
    assert any(not record.images for record in dataset.records)  # text-only chat
    assert any(len(record.turns) > 2 for record in dataset.records)  # multi-turn


def test_benchmarks_are_eval_files_with_metrics(world: dict) -> None:
    assert len(world["eval"]) >= 5 and set(world["eval"]) == set(BENCHMARKS)
    benchmarks = load_benchmarks([Path(p) for p in world["eval"].values()], world["images"])
    used = set()
    for bench in benchmarks:
        raw = json.loads(bench.path.read_text())
        assert len(raw) == SIZES.eval
        for record, reference, metric in zip(raw, bench.references, bench.metrics):
            assert record["metric"] in METRICS and record["metric"] == metric
            assert record["conversations"][-1]["from"] == "gpt"
            assert reference == record["conversations"][-1]["value"]
            if metric == "iou":
                assert parse_box(reference) is not None
            if metric == "option":
                assert option_letter(reference) is not None
            if metric == "cloze":
                assert reference in record["options"] and len(record["options"]) == 4
            used.add(metric)
    # Grounding names the cell and multiple choice is scored by cloze (issue 19): no boxes, no letters.
    assert used == {"exact", "cloze"} and used <= set(METRICS)


def _image_hashes(records: list[dict], images: Path) -> list[str | None]:
    return [hashlib.sha256((images / r["image"]).read_bytes()).hexdigest() if "image" in r else None
            for r in records]


def _question(record: dict) -> str:
    return record["conversations"][0]["value"].replace("<image>", "").strip()


def shared_with_training(world: dict) -> dict[str, dict[str, int]]:
    """Per benchmark: records whose image (by content) is a training or alignment image, and records whose
    (image content, question) pair is a training or alignment record's."""
    images = Path(world["images"])
    seen = [*json.loads(Path(world["train"]).read_text()), *json.loads(Path(world["align"]).read_text())]
    seen_images = set(_image_hashes(seen, images)) - {None}
    seen_pairs = set(zip(_image_hashes(seen, images), map(_question, seen)))
    out = {}
    for name, path in world["eval"].items():
        records = json.loads(Path(path).read_text())
        hashes = _image_hashes(records, images)
        out[name] = {"images": sum(h in seen_images for h in hashes),
                     "pairs": sum(p in seen_pairs for p in zip(hashes, map(_question, records)))}
    return out


def test_benchmark_records_are_not_training_records(world: dict) -> None:
    shared = shared_with_training(world)
    assert set(shared) == set(BENCHMARKS)
    assert all(counts == {"images": 0, "pairs": 0} for counts in shared.values()), shared


def test_the_leak_check_finds_a_copied_image(world: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(Path(world["train"]).parent, copy)
    info = {**world, "train": str(copy / "train.json"), "align": str(copy / "align.json"),
            "images": str(copy / "images"), "eval": {n: str(copy / "eval" / f"{n}.json") for n in world["eval"]}}
    train = json.loads((copy / "train.json").read_text())
    pope = json.loads((copy / "eval" / "pope.json").read_text())
    donor = next(r for r in train if "image" in r)
    # A training image written under the benchmark's own path, and a training question asked about it.
    (copy / "images" / pope[0]["image"]).write_bytes((copy / "images" / donor["image"]).read_bytes())
    pope[0]["conversations"][0]["value"] = donor["conversations"][0]["value"]
    (copy / "eval" / "pope.json").write_text(json.dumps(pope))
    shared = shared_with_training(info)
    assert shared["pope"] == {"images": 1, "pairs": 1}
    assert all(counts["images"] == 0 for name, counts in shared.items() if name != "pope")


def test_benchmark_records_with_a_seen_image_are_dropped() -> None:
    from PIL import Image

    from tive.bench.world import Example, drop_seen, pixel_digest

    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    examples = [Example([("q", "a")], red.copy(), "0"), Example([("q", "a")], blue, "1"), Example([("q", "a")])]
    kept, dropped = drop_seen(examples, {pixel_digest(red)})
    assert dropped == 1 and [e.image_key for e in kept] == ["1", None]


def test_another_world_in_the_same_folder_is_refused(world: dict) -> None:
    with pytest.raises(TiveError, match="other settings"):
        write_world(Path(world["train"]).parent, seed=4, sizes=SIZES)
