"""benchmarks/bench_lm_skills.py: the language model's skills on scenes written in words."""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lm_skills.py"


def _module() -> dict:
    return runpy.run_path(str(SCRIPT))


@pytest.mark.parametrize("skill", ["color", "kind", "count", "present", "exists", "position", "relation"])
def test_every_record_holds_the_scene_caption_and_a_short_question(skill) -> None:
    from tive.bench import world as w

    pairs = _module()["text_examples"](skill, 3, 40)
    assert len(pairs) == 40
    for prompt, answer in pairs:
        caption, question, suffix = prompt.split("\n")
        assert caption.endswith("background.") and caption[0].isupper()
        assert question.endswith("?") or question.startswith("Count")
        assert suffix == w.SHORT
        assert answer and "\n" not in answer


def test_present_answers_yes_exactly_when_the_caption_names_the_kind() -> None:
    pairs = _module()["text_examples"]("present", 5, 200)
    answers = Counter(answer for _, answer in pairs)
    assert set(answers) == {"yes", "no"} and min(answers.values()) > 60  # about half each
    for prompt, answer in pairs:
        caption, question, _ = prompt.split("\n")
        kind = question.removeprefix("Is there a ").removesuffix(" in the image?")
        assert (f" {kind} " in caption) == (answer == "yes"), prompt


def test_a_tiny_run_reports_each_skill_against_its_chance_level(tmp_path, monkeypatch, capsys) -> None:
    module = _module()
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["bench_lm_skills.py", "--out", str(out), "--skills", "present,color",
                                      "--records", "40", "--steps", "2", "--items", "12", "--hidden", "16",
                                      "--layers", "1", "--seed", "4", "--weight-decay", "0.1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    report = json.loads((out / "lm_skills.json").read_text())
    assert list(report["skills"]) == ["present", "color"]
    for skill, result in report["skills"].items():
        references = [a for _, a in module["text_examples"](skill, 4 + 10_000, 12)]
        assert result["chance"] == round(100 * Counter(references).most_common(1)[0][1] / 12, 1)
        assert 0 <= result["accuracy"] <= 100 and result["distinct_answers"] >= 1
        assert f"{skill:9s} accuracy" in printed
        train = json.loads((out / skill / "train.json").read_text())
        assert len(train) == 40 and not any("image" in record for record in train)  # text only


def test_an_unknown_skill_is_refused_with_the_choices(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_lm_skills.py", "--out", str(tmp_path), "--skills", "present,colour"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "unknown colour; choose from color, kind" in capsys.readouterr().err
