"""`tive run` completes on the real third-party files that ship with images (../shared/realdata)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.cli import main

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"

CASES = [  # (file, image root, records, records whose images all ship)
    ("LLaMA-Factory/data/mllm_demo.json", "LLaMA-Factory/data", 6, 6),
    ("LLaMA-Factory/data/v1_multimodal_demo.jsonl", "LLaMA-Factory", 24, 24),
    ("Qwen3-VL/qwen-vl-finetune/demo/single_images.json", "Qwen3-VL/qwen-vl-finetune", 3, 3),
    ("lmms-finetune/example_data/single_image.json", "lmms-finetune/example_data/images", 2, 2),
    ("lmms-finetune/example_data/multi_images.json", "lmms-finetune/example_data/images", 2, 1),
    ("lmms-finetune/example_data/single_image_has_text_only.json", "lmms-finetune/example_data/images", 4, 4),
]


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real sample data not found at {REALDATA}")
@pytest.mark.parametrize(("name", "images", "count", "ok"), CASES, ids=[c[0].split("/")[-1] for c in CASES])
def test_tive_run_on_real_files(name: str, images: str, count: int, ok: int, tmp_path: Path):
    data = REALDATA / name
    before = data.read_bytes()
    run = tmp_path / "run"
    args = ["run", str(data), "--images", str(REALDATA / images), "--out", str(run), "--budget", "0.5",
            "--proj-dim", "64", "--epochs", "1", "--model", "tiny"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == count and sum(r["status"] == "ok" for r in rows) == ok
    subset = next(run.glob("subset.*"))
    assert subset.suffix == data.suffix
    assert sum(r["selected"] for r in rows) == max(1, round(0.5 * ok))
    assert data.read_bytes() == before
