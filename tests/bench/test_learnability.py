"""benchmarks/bench_learnability.py's experimental bases: object-level vision and the sentence-form QA stream."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_learnability.py"
TINY = ["--records", "100", "--align", "12", "--eval-records", "4", "--vision-steps", "3", "--base-epochs", "1",
        "--steps", "2", "--skill-items", "2", "--sentence-items", "2", "--object-scenes", "12"]


def _run(monkeypatch, capsys, *args: str) -> str:
    import tive.bench.model as bench_model
    import tive.model.tiny as tiny

    # The script patches these for its one process; restore them after each test.
    monkeypatch.setattr(tiny, "build_tiny_model", tiny.build_tiny_model)
    monkeypatch.setattr(bench_model, "pretrain_vision", bench_model.pretrain_vision)
    monkeypatch.setattr(sys, "argv", ["bench_learnability.py", *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def test_object_vision_refuses_a_token_grid_that_is_not_the_scenes_grid(tmp_path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit, match="3x3 token grid.*got 16 tokens"):
        _run(monkeypatch, capsys, "--out", str(tmp_path), *TINY, "--object-vision")  # 32 px / patch 8: 4x4


@pytest.mark.parametrize("heads", ["linear", "tied"])
def test_object_vision_and_qa_stream_report_their_probes_and_train_once(tmp_path, monkeypatch, capsys,
                                                                       heads) -> None:
    args = ["--out", str(tmp_path), *TINY, "--image-size", "48", "--patch", "16", "--object-vision",
            "--object-heads", heads, "--qa-stream", "6", "--qa-steps", "2", "--qa-skills", "exists,color"]
    first = _run(monkeypatch, capsys, *args)
    result = json.loads((tmp_path / "learnability.json").read_text())
    base = result["base"]
    assert set(base["object_probe"]) == {"color_per_occupied_cell", "shape_per_occupied_cell", "empty_vs_occupied",
                                         "number"}
    assert all(0 <= v <= 100 for v in base["object_probe"].values())
    assert base["qa_stream"]["settings"]["skills"] == "exists,color"
    skills = {"color", "shape", "count", "exists", "position", "relation"}
    assert set(base["sentence_skills"]) == skills and set(result["train"]["sentence_skills"]) == skills
    assert f"object vision ({heads} heads)" in first
    assert "qa stream: 6 records, 2 steps" in first
    questions = json.loads((tmp_path / "qa_stream" / "qa.json").read_text())
    assert all(turn["value"].startswith(("Yes", "No", "The ")) for r in questions for turn in r["conversations"][1::2])
    assert (tmp_path / "base_qa" / "qa_stream.json").is_file()
    second = _run(monkeypatch, capsys, *args)  # same settings: the QA-stream base is reused, not trained again
    assert "qa stream:" not in second


def test_a_folder_built_with_other_model_options_is_refused_not_reused(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "base_options.json").write_text(json.dumps({
        "image_size": 48, "patch": 16, "hidden": 128, "layers": 2, "tied_embeddings": False, "object_vision": True,
        "object_heads": "linear", "object_scenes": 12}))
    with pytest.raises(SystemExit):
        _run(monkeypatch, capsys, "--out", str(tmp_path), *TINY, "--image-size", "48", "--patch", "16",
             "--object-vision", "--object-heads", "tied")
    assert "other model options (--object-heads linear -> tied); use another --out" in capsys.readouterr().err
    assert not (tmp_path / "world").exists()


def test_an_unknown_qa_skill_is_refused_with_the_choices(tmp_path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit):
        _run(monkeypatch, capsys, "--out", str(tmp_path), *TINY, "--qa-stream", "4", "--qa-skills", "exist")
    assert "--qa-skills: unknown exist; choose from color, kind, count, exists" in capsys.readouterr().err
