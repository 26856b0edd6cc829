"""Scoring rules of the benchmarks: exact match, option letter, box IoU."""

from __future__ import annotations

import pytest

from tive.bench.metrics import box_iou, exact_match, iou_match, normalise, option_letter, option_match, parse_box, score


def test_exact_is_case_and_punctuation_insensitive() -> None:
    assert exact_match("Red.", "red")
    assert exact_match("  top   LEFT!", "top left")
    assert exact_match("47", "47")
    assert not exact_match("red circle", "red")
    assert not exact_match("4", "47")
    assert normalise("It's  a Cat.") == "it s a cat"


def test_option_takes_the_first_letter() -> None:
    assert option_letter("B") == "B"
    assert option_letter("B. circle") == "B"
    assert option_letter("(C) square") == "C"
    assert option_letter("The answer is D.") == "D"
    assert option_letter("circle") is None
    assert option_match("B.", "B")
    assert not option_match("A", "B")
    assert not option_match("", "B")


def test_iou() -> None:
    assert parse_box("[0.10, 0.20, 0.30, 0.40]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("[0.1, 0.2]") is None
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == pytest.approx(1.0)
    assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0.0
    assert box_iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)
    assert iou_match("[0.10, 0.10, 0.50, 0.50]", "[0.12, 0.11, 0.50, 0.52]")
    assert not iou_match("[0.10, 0.10, 0.30, 0.30]", "[0.10, 0.10, 0.50, 0.50]")  # IoU 0.25
    assert not iou_match("no box here", "[0.1, 0.1, 0.5, 0.5]")
    # IoU exactly 0.5 counts as correct.
    assert iou_match("[0.0, 0.0, 0.5, 1.0]", "[0.0, 0.0, 1.0, 1.0]")


def test_score_dispatch() -> None:
    assert score("exact", "Yes", "yes")
    assert score("option", "A", "A")
    assert score("iou", "[0, 0, 1, 1]", "[0, 0, 1, 1]")
    with pytest.raises(ValueError):
        score("bleu", "a", "a")
