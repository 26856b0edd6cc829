"""Image checks: confinement to the image root, missing and unreadable files, error vs skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import tive.data.images as images_module
from tive.data import STATUS_OK, check_images, load_dataset
from tive.errors import DataError, TiveError


def llava(image: Any = None, question: str | None = None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict(fields)
    if image is not None:
        record["image"] = image
    n_images = 0 if image is None else (1 if isinstance(image, str) else len(image))
    value = question if question is not None else "<image>" * n_images + "\nWhat is this?"
    record["conversations"] = [{"from": "human", "value": value}, {"from": "gpt", "value": "A thing."}]
    return record


def save_png(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format="PNG")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    save_png(root / "a.png")
    save_png(root / "sub" / "b.png", "blue")
    return root


def load(tmp_path: Path, records: list[dict[str, Any]], name: str = "data.json") -> Any:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return load_dataset(path)


def test_readable_images_get_resolved_paths(tmp_path: Path, root: Path) -> None:
    dataset = load(
        tmp_path,
        [llava("a.png", id="r0"), llava(["sub/b.png", "a.png"], id="r1"), llava(question="text only", id="r2")],
    )
    check_images(dataset, root)
    r0, r1, r2 = dataset.records
    assert all(record.status == STATUS_OK for record in dataset.records)
    assert r0.image_paths == [(root / "a.png").resolve()]
    assert r1.image_paths == [(root / "sub/b.png").resolve(), (root / "a.png").resolve()]
    assert r2.image_paths == []


def test_absolute_path_inside_root_and_dotdot_staying_inside_are_accepted(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava(str((root / "a.png").resolve())), llava("sub/../a.png")])
    check_images(dataset, str(root))
    assert [record.image_paths for record in dataset.records] == [[(root / "a.png").resolve()]] * 2


def test_symlink_inside_root_is_accepted(tmp_path: Path, root: Path) -> None:
    (root / "link.png").symlink_to(root / "sub" / "b.png")
    dataset = load(tmp_path, [llava("link.png")])
    check_images(dataset, root)
    assert dataset.records[0].image_paths == [(root / "sub/b.png").resolve()]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("on_missing", ["error", "skip"])
def test_path_escaping_the_root_is_refused(tmp_path: Path, root: Path, kind: str, on_missing: str) -> None:
    outside = save_png(tmp_path / "secret.png")
    written = {"dotdot": "../secret.png", "absolute": str(outside), "symlink": "escape.png"}[kind]
    if kind == "symlink":
        (root / "escape.png").symlink_to(outside)
    dataset = load(tmp_path, [llava("a.png", id="fine"), llava(written, id="evil")])
    with pytest.raises(DataError) as info:
        check_images(dataset, root, on_missing=on_missing)
    message = str(info.value)
    assert info.value.field == "image"
    assert "record 1" in message and "'evil'" in message and "data.json" in message
    assert "outside the image directory" in message
    assert "--images" in message  # the hint


def test_escape_is_refused_before_any_file_is_opened(tmp_path: Path, root: Path) -> None:
    # The missing image comes first, but the escaping path is reported even in "error" mode.
    dataset = load(tmp_path, [llava("missing.png"), llava("../../etc/passwd")])
    with pytest.raises(DataError, match="outside the image directory"):
        check_images(dataset, root)


def test_missing_image_error(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("a.png", id="ok"), llava("nope.png", id="m1"), llava("gone.png", id="m2")])
    with pytest.raises(DataError) as info:
        check_images(dataset, root)
    message = str(info.value)
    assert "data.json" in message
    assert "record 1" in message and "'m1'" in message  # the earliest bad record
    assert "field 'image'" in message
    assert str((root / "nope.png").resolve()) in message
    assert "--on-bad-record skip" in message


def test_missing_image_skip(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("a.png"), llava(["a.png", "nope.png"]), llava(question="text")])
    check_images(dataset, root, on_missing="skip")
    ok, skipped, text_only = dataset.records
    assert ok.ok and text_only.ok
    assert skipped.status == f"skipped: missing image {(root / 'nope.png').resolve()}"
    assert skipped.image_paths == []


def test_directory_is_not_an_image(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("sub")])
    check_images(dataset, root, on_missing="skip")
    assert dataset.records[0].status.startswith("skipped: missing image")


def test_undecodable_image_error_and_skip(tmp_path: Path, root: Path) -> None:
    (root / "broken.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    dataset = load(tmp_path, [llava("broken.jpg", id=5)])
    with pytest.raises(DataError) as info:
        check_images(dataset, root)
    message = str(info.value)
    assert "record 0" in message and "id 5" in message and "field 'image'" in message
    assert "not a readable image" in message
    assert "--on-bad-record skip" in message

    check_images(dataset, root, on_missing="skip")
    status = dataset.records[0].status
    assert status.startswith(f"skipped: unreadable image {(root / 'broken.jpg').resolve()}: ")


def test_truncated_png_is_unreadable(tmp_path: Path, root: Path) -> None:
    data = (root / "a.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    dataset = load(tmp_path, [llava("cut.png")])
    check_images(dataset, root, on_missing="skip")
    assert dataset.records[0].status.startswith("skipped: unreadable image")


def test_png_named_jpg_is_accepted(tmp_path: Path, root: Path) -> None:
    save_png(root / "photo.jpg")
    dataset = load(tmp_path, [llava("photo.jpg")])
    check_images(dataset, root)
    assert dataset.records[0].ok


def test_each_distinct_file_is_opened_once(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    dataset = load(tmp_path, [llava("a.png"), llava("sub/b.png"), llava(["sub/../a.png", "a.png"])] * 20)
    check_images(dataset, root)
    assert sorted(opened) == sorted([str((root / "a.png").resolve()), str((root / "sub/b.png").resolve())])


def test_records_already_skipped_are_not_checked(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("nope.png"), llava("a.png")])
    dataset.records[0].status = "skipped: for a test"
    check_images(dataset, root)
    assert dataset.records[0].status == "skipped: for a test"
    assert dataset.records[1].ok


def test_images_need_an_image_root(tmp_path: Path) -> None:
    dataset = load(tmp_path, [llava("a.png"), llava(question="text")])
    with pytest.raises(TiveError, match="--images"):
        check_images(dataset, None)


def test_text_only_dataset_needs_no_root(tmp_path: Path) -> None:
    dataset = load(tmp_path, [llava(question="text")])
    check_images(dataset, None)
    assert dataset.records[0].ok


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    dataset = load(tmp_path, [llava("a.png")])
    with pytest.raises(TiveError, match="image directory does not exist"):
        check_images(dataset, tmp_path / "no_such_dir")


def test_on_missing_must_be_known(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("a.png")])
    with pytest.raises(TiveError, match="--on-bad-record ignore: choose one of skip, error"):
        check_images(dataset, root, on_missing="ignore")


def save_jpeg(path: Path) -> bytes:
    import numpy as np

    pixels = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def test_a_jpeg_cut_short_is_caught_although_pillow_verify_passes_it(tmp_path: Path, root: Path) -> None:
    data = save_jpeg(root / "full.jpg")
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(root / "cut.jpg") as image:
        image.verify()  # what the check relied on before: it does not decode JPEG data
    dataset = load(tmp_path, [llava("full.jpg", id="whole"), llava("cut.jpg", id="cut")])
    with pytest.raises(DataError, match="record 1, id 'cut', field 'image'.*truncated"):
        check_images(dataset, root)
    dataset = load(tmp_path, [llava("full.jpg", id="whole"), llava("cut.jpg", id="cut")])
    bad = check_images(dataset, root, on_missing="skip")
    assert dataset.records[0].ok
    assert dataset.records[1].status.startswith("skipped: unreadable image") and "truncated" in dataset.records[1].status
    assert list(bad.reasons) == [1]


def test_a_jpeg_with_bytes_after_its_end_marker_is_accepted(tmp_path: Path, root: Path) -> None:
    data = save_jpeg(root / "full.jpg")
    (root / "tail.jpg").write_bytes(data + b"appended by some camera")
    (root / "padded.jpg").write_bytes(data + b"\x00" * 100)
    dataset = load(tmp_path, [llava("tail.jpg"), llava("padded.jpg")])
    check_images(dataset, root)
    assert all(record.ok for record in dataset.records)


def test_a_nul_byte_in_an_image_path_is_named_not_a_traceback(tmp_path: Path, root: Path) -> None:
    dataset = load(tmp_path, [llava("a.png"), llava("a\u0000.png", id="nul")])
    with pytest.raises(DataError, match="record 1, id 'nul', field 'image'.*not a valid path: it holds a NUL byte"):
        check_images(dataset, root)
    check_images(dataset, root, on_missing="skip")
    assert dataset.records[0].ok and dataset.records[1].status.startswith("skipped: invalid image path")


def test_many_bad_images_stop_the_check_even_when_skipping(tmp_path: Path, root: Path) -> None:
    records = [llava("a.png")] * 100 + [llava(f"missing{i}.png", id=i) for i in range(12)]
    dataset = load(tmp_path, records)
    with pytest.raises(TiveError, match="11 of 112 records could not be used.*--max-bad-fraction"):
        check_images(dataset, root, on_missing="skip", max_bad_fraction=0.05)
    dataset = load(tmp_path, records)
    bad = check_images(dataset, root, on_missing="skip", max_bad_fraction=0.2)  # 12 of 112 is allowed here
    assert len(bad.reasons) == 12 and sum(record.ok for record in dataset.records) == 100


def test_progress_bar_for_many_images(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tive.progress

    monkeypatch.setattr(images_module, "_PROGRESS_THRESHOLD", 1)
    monkeypatch.setattr(tive.progress, "DEFAULT_INTERVAL", 0.0)  # a line per image when not on a terminal
    check_images(load(tmp_path, [llava("a.png"), llava("sub/b.png")]), root)
    assert "checking images: 2/2 img" in capsys.readouterr().err

    monkeypatch.setattr(images_module, "_PROGRESS_THRESHOLD", 2000)
    check_images(load(tmp_path, [llava("a.png"), llava("sub/b.png")]), root)
    assert "checking images" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Real files


def test_real_lmms_finetune_images(realdata: Path) -> None:
    folder = realdata / "lmms-finetune/example_data"
    multi = load_dataset(folder / "multi_images.json")
    check_images(multi, folder / "images", on_missing="skip")
    # soccer1.jpg is really a PNG and soccer2.jpg really WebP: both are readable images.
    assert multi.records[0].ok
    assert [path.name for path in multi.records[0].image_paths] == ["soccer1.jpg", "soccer2.jpg"]
    assert multi.records[1].status.startswith("skipped: missing image")
    assert multi.records[1].status.endswith("post1.png")

    single = load_dataset(folder / "single_image_has_text_only.json")
    check_images(single, folder / "images")
    assert all(record.ok for record in single.records)


def test_real_qwen_demo_images(realdata: Path) -> None:
    dataset = load_dataset(realdata / "Qwen3-VL/qwen-vl-finetune/demo/single_images.json")
    check_images(dataset, realdata / "Qwen3-VL/qwen-vl-finetune")
    assert [record.image_paths[0].name for record in dataset.records] == ["10095.png", "10095.png", "10149.png"]


def test_real_llava_instruct_images_are_missing(realdata: Path, tmp_path: Path) -> None:
    dataset = load_dataset(realdata / "LLaMA-Factory/data/llava_instruct_100.json")
    with pytest.raises(DataError, match=r"record 0, id '000000379143', field 'image'"):
        check_images(dataset, tmp_path)
    check_images(dataset, tmp_path, on_missing="skip")
    assert all(record.status.startswith("skipped: missing image") for record in dataset.records)
