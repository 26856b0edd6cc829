"""Tests for the offline demo dataset generator."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tive.demo_data import (
    BACKGROUNDS,
    COLORS,
    DEMO_TASKS,
    SHAPES,
    TaskSpec,
    make_box,
    make_color,
    make_count,
    make_demo_dataset,
    task_sizes,
)
from tive.synthetic import IMAGE_TOKEN, Example

N = 600
BOX_RE = re.compile(r"^\[(\d\.\d\d), (\d\.\d\d), (\d\.\d\d), (\d\.\d\d)\]$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("demo")
    path = make_demo_dataset(out, n_records=N, seed=0)
    return path, json.loads(path.read_text())


def _image_hashes(out_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out_dir / "images").rglob("*.png"))
    }


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _mask(pixels: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.array(color, dtype=np.int16), axis=-1)


def test_record_count_ids_and_task_shares(demo: tuple[Path, list[dict]]) -> None:
    path, records = demo
    assert path.name == "demo.json"
    assert len(records) == N
    ids = [r["id"] for r in records]
    assert len(set(ids)) == N
    counts = Counter(r["dataset"] for r in records)
    assert set(counts) == {t.name for t in DEMO_TASKS}
    total = sum(t.weight for t in DEMO_TASKS)
    for task in DEMO_TASKS:
        assert abs(counts[task.name] - N * task.weight / total) <= 1
    for r in records:
        assert r["id"].startswith(r["dataset"] + "-")
    # imbalanced: the largest task is at least twice the smallest
    assert max(counts.values()) >= 2 * min(counts.values())


def test_task_sizes_sum_exactly() -> None:
    for n in (1, 7, 99, 1200, 1201):
        sizes = task_sizes(DEMO_TASKS, n)
        assert sum(sizes.values()) == n
        assert all(s >= 0 for s in sizes.values())


def test_images_exist_and_placeholders(demo: tuple[Path, list[dict]]) -> None:
    path, records = demo
    image_root = path.parent / "images"
    n_text_only = 0
    placements = Counter()
    for r in records:
        conv = r["conversations"]
        assert len(conv) >= 2 and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert all(isinstance(t["value"], str) and t["value"] for t in conv)
        if "image" not in r:
            n_text_only += 1
            assert r["dataset"] == "chat"
            assert all(IMAGE_TOKEN not in t["value"] for t in conv)
            continue
        assert r["image"].startswith(r["dataset"] + "/") and r["image"].endswith(".png")
        with Image.open(image_root / r["image"]) as im:
            assert im.format == "PNG"
            assert im.mode == "RGB"
            assert im.size == (64, 64)
        first = conv[0]["value"]
        assert first.count(IMAGE_TOKEN) == 1
        assert all(IMAGE_TOKEN not in t["value"] for t in conv[1:])
        placements["before" if first.startswith(IMAGE_TOKEN + "\n") else "after"] += 1
        if not first.startswith(IMAGE_TOKEN + "\n"):
            assert first.endswith("\n" + IMAGE_TOKEN)
    assert n_text_only > 0
    assert placements["before"] > 0 and placements["after"] > 0
    assert placements["before"] > placements["after"]


def test_color_task_reuses_images(demo: tuple[Path, list[dict]]) -> None:
    _, records = demo
    color = [r for r in records if r["dataset"] == "color"]
    images = Counter(r["image"] for r in color)
    assert len(images) <= len(color) / 5
    questions = {r["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip() for r in color}
    assert len(questions) >= 3
    # other image tasks do not share files
    count = [r for r in records if r["dataset"] == "count"]
    assert len({r["image"] for r in count}) == len(count)


def test_same_seed_identical_other_seed_differs(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", n_records=200, seed=3)
    b = make_demo_dataset(tmp_path / "b", n_records=200, seed=3)
    c = make_demo_dataset(tmp_path / "c", n_records=200, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert _image_hashes(a.parent) == _image_hashes(b.parent)
    assert a.read_bytes() != c.read_bytes()
    assert _image_hashes(a.parent) != _image_hashes(c.parent)


def test_box_answers_well_formed_and_match_pixels(demo: tuple[Path, list[dict]]) -> None:
    path, records = demo
    boxes = [r for r in records if r["dataset"] == "box"]
    assert boxes
    for r in boxes:
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        match = BOX_RE.match(answer)
        assert match, answer
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        assert all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2))
        assert x1 < x2 and y1 < y2
        # the referred colour appears only inside the answered box, and fills it edge to edge
        color = re.search(r"the (\w+) (\w+)\.", question).group(1)
        assert color in COLORS
        with Image.open(path.parent / "images" / r["image"]) as im:
            mask = _mask(_pixels(im), COLORS[color])
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0
        tol = 1 / 64 + 0.005  # one pixel (pointed shapes) plus rounding to two decimals
        assert abs(xs.min() / 64 - x1) <= tol and abs((xs.max() + 1) / 64 - x2) <= tol
        assert abs(ys.min() / 64 - y1) <= tol and abs((ys.max() + 1) / 64 - y2) <= tol


def test_choice_answers_are_offered_letters(demo: tuple[Path, list[dict]]) -> None:
    _, records = demo
    choice = [r for r in records if r["dataset"] == "choice"]
    assert choice
    answers = Counter()
    for r in choice:
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        options = dict(re.findall(r"^([A-E])\. (\w+)$", question, flags=re.MULTILINE))
        assert 3 <= len(options) <= 4
        assert set(options.values()) <= set(SHAPES)
        assert re.fullmatch(r"[A-E]", answer) and answer in options
        answers[answer] += 1
    assert len(answers) >= 3  # options are shuffled


def test_color_answers_match_pixels(demo: tuple[Path, list[dict]]) -> None:
    path, records = demo
    for r in (r for r in records if r["dataset"] == "color"):
        answer = r["conversations"][1]["value"]
        assert answer in COLORS
        with Image.open(path.parent / "images" / r["image"]) as im:
            pixels = _pixels(im)
        assert _mask(pixels, COLORS[answer]).sum() > 300
        for other, rgb in COLORS.items():
            if other != answer:
                assert _mask(pixels, rgb).sum() == 0


def test_count_answers_match_ground_truth_and_drawing() -> None:
    examples = make_count(np.random.default_rng(11), 80)
    assert len(examples) == 80
    seen_counts = set()
    for ex in examples:
        question, answer = ex.turns[0]
        truth = ex.truth
        target = truth["target"]
        assert target in question
        assert answer == str(truth["count"])
        assert truth["count"] == sum(s.kind == target for s in truth["shapes"])
        seen_counts.add(truth["count"])
        pixels = _pixels(ex.image)
        background = _mask(pixels, BACKGROUNDS[truth["background"]])
        inside = np.zeros(background.shape, dtype=bool)
        for shape in truth["shapes"]:
            x0, y0, x1, y1 = shape.box
            inside[y0:y1, x0:x1] = True
            assert _mask(pixels[y0:y1, x0:x1], COLORS[shape.color]).sum() > 10
        assert background[~inside].all()  # nothing drawn outside the shapes' boxes
        # boxes never overlap, so each shape is counted once
        area = sum((s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s in truth["shapes"])
        assert inside.sum() == area
    assert seen_counts == set(range(1, 7))


def test_make_functions_return_examples() -> None:
    rng = np.random.default_rng(0)
    for ex in make_color(rng, 30) + make_box(rng, 10):
        assert isinstance(ex, Example)
        assert ex.image is not None and ex.image.size == (64, 64)
    for ex in make_box(np.random.default_rng(1), 30):
        colors = [s.color for s in ex.truth["shapes"]]
        assert len(set(colors)) == len(colors)  # the referring expression is unambiguous


def test_registry_is_extensible(tmp_path: Path) -> None:
    def make_const(rng: np.random.Generator, n: int) -> list[Example]:
        return [Example([("Say hi.", "hi")]) for _ in range(n)]

    tasks = [*DEMO_TASKS, TaskSpec("const", 1.0, make_const)]
    records = json.loads(make_demo_dataset(tmp_path, n_records=100, seed=0, tasks=tasks).read_text())
    assert len(records) == 100
    assert Counter(r["dataset"] for r in records)["const"] == 50
    # a task's records depend on the seed and its own size only, not on which other tasks are in the list
    base = json.loads(make_demo_dataset(tmp_path / "base", n_records=200, seed=0).read_text())
    digits_base = sorted((r["id"], json.dumps(r)) for r in base if r["dataset"] == "digits")
    digits_task = [t for t in DEMO_TASKS if t.name == "digits"]
    alone = json.loads(
        make_demo_dataset(tmp_path / "alone", n_records=len(digits_base), seed=0, tasks=digits_task).read_text()
    )
    assert digits_base == sorted((r["id"], json.dumps(r)) for r in alone)


def test_invalid_n_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, n_records=0)


def test_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    path = make_demo_dataset(tmp_path, n_records=1200, seed=1)
    elapsed = time.perf_counter() - start
    assert len(json.loads(path.read_text())) == 1200
    assert elapsed < 8.0, f"took {elapsed:.1f}s"
