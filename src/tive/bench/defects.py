"""The ground truth of a world with known defects, and what each method did with it (issue 19, items 4-6).

A built-in world of a defect kind lists every defective record in `world/defects.json` (`world.ground_truth`);
the bench reads it here, tive's stages never see it. Two positive controls use it (`methods.m_clean_oracle`,
`methods.m_task_oracle`), and the defect table measures each method against it:

- record-level defects (wrong answers, off-format answers, near-duplicates): the AUROC of the method's choice
  score (the probability that a clean record of the defect's tasks scores above a defective one; ties count
  half), for the methods that rank by a score, and the share of the chosen records that carry the defect, beside
  its share of the input;
- task-level defects (the large task the prior already knows, the trap task of random answers): each task's
  share of the budget, beside its share of the input.

Only numpy is imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError

# The per-record score each method ranks or samples by (None: the method ranks by none; no AUROC).
CHOICE_SCORES = {
    "tive": "values", "tive_instance_only": "values", "tive_diverse": "values",
    "grad_norm": "grad_norms", "grad_norm_balanced": "grad_norms",
    "el2n": "el2n", "el2n_balanced": "el2n",
    "length": "answer_tokens", "length_balanced": "answer_tokens",
}
RECORD_DEFECTS = ("wrong_answer", "off_format", "near_duplicate")


@dataclass
class Truth:
    """A world's defects, aligned with the training records the bench loaded.

    Attributes:
        defect: per record, the name of its defect ("" for a clean record).
        defect_tasks: defect name -> the tasks it was applied to.
        known_tasks: tasks of skills the language prior already has (no budget needed).
        trap_tasks: tasks of random answers (no budget wanted).
    """

    defect: np.ndarray
    defect_tasks: dict[str, list[str]]
    known_tasks: tuple[str, ...]
    trap_tasks: tuple[str, ...]

    @property
    def defective(self) -> np.ndarray:
        return self.defect != ""

    @property
    def any(self) -> bool:
        return bool(self.defective.any() or self.known_tasks or self.trap_tasks)


def read_truth(path: Path, ids: Sequence[str]) -> Truth:
    """The ground truth of `path` (world/defects.json) for the training records with these ids, in their order;
    a listed record that is not among them, or whose index disagrees, is an error (the file is not this world's)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TiveError(f"{path}: cannot read the world's ground truth ({exc}); delete the world folder and rerun") from exc
    position = {record_id: index for index, record_id in enumerate(ids)}
    defect = np.full(len(ids), "", dtype=object)
    for entry in data["records"]:
        index = position.get(entry["id"])
        if index is None or index != entry["index"]:
            raise TiveError(f"{path}: record {entry['index']} (id {entry['id']}) is not that record of the training "
                            "file; the ground truth belongs to another world: delete the world folder and rerun")
        defect[index] = entry["defect"]
    return Truth(defect=defect.astype(str), defect_tasks={k: list(v["tasks"]) for k, v in data["defects"].items()},
                 known_tasks=tuple(data["known_tasks"]), trap_tasks=tuple(data["trap_tasks"]))


def auroc(scores: np.ndarray, defective: np.ndarray) -> float | None:
    """P(a clean record's score > a defective record's score), ties counting half; None without both kinds."""
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(defective, dtype=bool)
    clean, bad = np.sort(scores[~defective]), np.sort(scores[defective])
    if not len(clean) or not len(bad):
        return None
    below = np.searchsorted(bad, clean, side="left")  # defective scores strictly below each clean score
    equal = np.searchsorted(bad, clean, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (len(clean) * len(bad)))


def method_defects(truth: Truth, tasks: Sequence[str], subsets: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray] | None) -> dict[str, Any]:
    """One method's row of the defect table, over its seeds.

    Args:
        truth: the world's ground truth.
        tasks: each training record's task.
        subsets: the method's chosen positions, one array per seed.
        scores: the method's choice score per record, one array per seed (the seeds' reference models differ),
            or None for a method that ranks by no score.
    """
    tasks = np.asarray(tasks)
    n = len(tasks)
    row: dict[str, Any] = {"seeds": len(subsets), "records": int(np.mean([len(s) for s in subsets])),
                           "auroc": {}, "chosen_share": {}, "input_share": {}, "task_share": {},
                           "task_input_share": {}}
    for name in RECORD_DEFECTS:
        if name not in truth.defect_tasks:
            continue
        is_bad = truth.defect == name
        row["input_share"][name] = float(is_bad.sum() / n)
        row["chosen_share"][name] = float(np.mean([is_bad[s].sum() / len(s) for s in subsets]))
        if scores is not None:
            within = np.isin(tasks, truth.defect_tasks[name])
            values = [auroc(seed_scores[within], is_bad[within]) for seed_scores in scores]
            row["auroc"][name] = None if any(v is None for v in values) else float(np.mean(values))
        else:
            row["auroc"][name] = None
    for task in (*truth.known_tasks, *truth.trap_tasks):
        row["task_input_share"][task] = float((tasks == task).sum() / n)
        row["task_share"][task] = float(np.mean([(tasks[s] == task).sum() / len(s) for s in subsets]))
    return row


__all__ = ["CHOICE_SCORES", "RECORD_DEFECTS", "Truth", "auroc", "method_defects", "read_truth"]
