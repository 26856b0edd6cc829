"""How a benchmark answer is scored: exact match, option letter, box IoU >= 0.5, or cloze.

`cloze` (multiple choice as OLMES scores it for small models): the model's answer is the option whose text has
the highest summed log-likelihood as the answer (`tive.bench.worker`), then compared with the reference exactly.

Only the standard library is imported, so metrics are tested (and reusable) without torch.
"""

from __future__ import annotations

import re
import string

METRICS = ("exact", "option", "iou", "cloze")
IOU_THRESHOLD = 0.5

_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
_OPTION = re.compile(r"\b([A-Z])\b")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)")


def normalise(text: str) -> str:
    """Lower case, punctuation replaced by spaces, whitespace collapsed: `" Red."` and `"red"` match."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Case- and punctuation-insensitive equality."""
    return normalise(prediction) == normalise(reference)


def option_letter(text: str) -> str | None:
    """The first option letter in `text` (a capital letter standing alone: "B", "B.", "(B) circle")."""
    match = _OPTION.search(text.strip())
    return match.group(1) if match else None


def option_match(prediction: str, reference: str) -> bool:
    """Whether the first option letter of the prediction is the reference's."""
    truth = option_letter(reference)
    return truth is not None and option_letter(prediction) == truth


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first four numbers in `text` as a box [x1, y1, x2, y2], or None when there are fewer than four."""
    numbers = _NUMBER.findall(text)
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = (float(v) for v in numbers[:4])
    return x1, y1, x2, y2


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when either is empty or inverted)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def iou_match(prediction: str, reference: str) -> bool:
    """Whether the predicted box overlaps the reference box with IoU >= 0.5."""
    truth, guess = parse_box(reference), parse_box(prediction)
    if truth is None or guess is None:
        return False
    return box_iou(guess, truth) >= IOU_THRESHOLD


def score(metric: str, prediction: str, reference: str) -> bool:
    """Whether `prediction` is correct under `metric` (one of METRICS)."""
    if metric in ("exact", "cloze"):  # cloze: the prediction is the option the log-likelihoods chose
        return exact_match(prediction, reference)
    if metric == "option":
        return option_match(prediction, reference)
    if metric == "iou":
        return iou_match(prediction, reference)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
