"""One bad record never kills a long stage: it is skipped, named and counted — and many bad records stop the run."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import small_options
from tive.cli import main
from tive.errors import DataError, TiveError
from tive.stages import run_features, run_prepare, run_score, run_select, run_warmup


def manifest(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def own_data(small_data: Path, tmp_path: Path) -> Path:
    """A private copy of the 140-record demo data (its images may be broken by the test)."""
    folder = tmp_path / "data"
    shutil.copytree(small_data.parent, folder)
    return folder / small_data.name


def cut_jpeg(path: Path) -> None:
    """Replace `path` by a JPEG cut short: Pillow opens and verifies it, decoding it fails."""
    with Image.open(path) as image:
        image.convert("RGB").resize((64, 64)).save(path.with_suffix(".tmp.jpg"), format="JPEG", quality=95)
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.with_suffix(".tmp.jpg").unlink()
    path.write_bytes(data[: len(data) // 2])


def single_use_images(data: Path, n: int) -> list[tuple[int, str]]:
    """(record index, image path) of `n` records whose image no other record uses."""
    records = json.loads(data.read_text())
    uses = Counter(r.get("image") for r in records)
    return [(i, r["image"]) for i, r in enumerate(records) if r.get("image") and uses[r["image"]] == 1][:n]


def test_tive_run_with_one_jpeg_cut_short_finishes_and_names_it(own_data: Path, tmp_path: Path, capsys):
    (index, image), = single_use_images(own_data, 1)
    cut_jpeg(own_data.parent / "images" / image)
    out = tmp_path / "run"
    args = ["run", str(own_data), "--images", str(own_data.parent / "images"), "--task-field", "dataset",
            "--out", str(out), "--model", "tiny", "--proj-dim", "64", "--epochs", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"record {index}" in printed and image in printed and "truncated" in printed.lower()
    rows = manifest(out)
    assert rows[index]["status"].startswith("skipped: unreadable image") and rows[index]["selected"] == 0
    assert sum(row["status"] == "ok" for row in rows) == 139
    assert np.load(out / "features" / "features.npy").shape == (139, 64)
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[rows[index]["task"]]["skipped"] == {"prepare": 1, "features": 0}


def test_an_image_broken_after_prepare_is_skipped_by_warmup_and_features(own_data: Path, tmp_path: Path, capsys):
    prepare, warmup, features, select = small_options(own_data)
    features.proj_dim = 64
    run = tmp_path / "run"
    run_prepare(own_data, run, prepare)
    broken = single_use_images(own_data, 3)
    for _, image in broken:
        cut_jpeg(own_data.parent / "images" / image)
    warm = run_warmup(run, warmup)  # the warm-up sample holds some of them: they are left out
    in_sample = {str(i) for i, _ in broken} & {str(i) for i in warm["warmup_indices"]}
    assert in_sample and set(warm["skipped"]) == in_sample
    run_features(run, features)
    run_score(run)
    run_select(run, select)
    rows = manifest(run)
    for index, image in broken:
        status = rows[index]["status"]
        assert status.startswith("skipped: features: cannot read image") and image in status
        assert rows[index]["grad_norm"] is None and rows[index]["value"] is None and rows[index]["selected"] == 0
    assert np.load(run / "features" / "features.npy").shape == (137, 64)
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert sorted(int(i) for i in meta["skipped"]) == sorted(i for i, _ in broken)
    tasks = json.loads((run / "tasks.json").read_text())
    assert sum(t["skipped"]["features"] for t in tasks.values()) == 3
    assert sum(t["ok"] for t in tasks.values()) == 137 == sum(r["status"] == "ok" for r in rows)
    assert "3 record(s) skipped" in capsys.readouterr().out
    # Retry after fixing the images: the skipped records are computed again and get features.
    for _, image in broken:
        Image.new("RGB", (64, 64), "white").save(own_data.parent / "images" / image)
    run_features(run, type(features)(**{**features.__dict__, "retry_skipped": True}))
    assert all(row["status"] == "ok" for row in manifest(run))
    assert np.load(run / "features" / "features.npy").shape == (140, 64)


def test_on_bad_record_error_stops_the_features_at_the_record_naming_it(own_data: Path, tmp_path: Path):
    prepare, warmup, features, _ = small_options(own_data)
    run = tmp_path / "run"
    run_prepare(own_data, run, prepare)
    run_warmup(run, warmup)
    (index, image), = single_use_images(own_data, 1)
    cut_jpeg(own_data.parent / "images" / image)
    features.on_bad_record = "error"
    with pytest.raises(DataError) as caught:
        run_features(run, features)
    message = str(caught.value)
    assert "demo.json" in message and f"record {index}" in message and "field 'image'" in message
    assert "--on-bad-record skip" in message


def test_bad_records_that_are_not_rare_stop_the_features(own_data: Path, tmp_path: Path):
    prepare, warmup, features, _ = small_options(own_data)
    run = tmp_path / "run"
    run_prepare(own_data, run, prepare)
    run_warmup(run, warmup)
    for image in (own_data.parent / "images").rglob("*.png"):  # e.g. a sync that left the files empty
        image.write_bytes(b"")
    with pytest.raises(TiveError, match="features: .* could not be used .*--max-bad-fraction"):
        run_features(run, features)
