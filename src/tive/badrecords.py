"""What a stage does with a record it cannot use: skip it and go on, or stop — and stop anyway when it is not rare.

At 665K records one broken image or odd conversation must not cost a 40-hour run, so by default (`--on-bad-record
skip`) such a record is marked `skipped: <reason>`, counted and reported, and the stage goes on. But when failures
are not rare something is wrong with the run itself (a wrong image root, a template that fits no record, the wrong
model), and skipping would silently select from what is left: the stage stops when

- more than `--max-bad-fraction` of the stage's records (and more than `MIN_BAD_RECORDS`) have failed, or
- more than `MIN_BAD_RECORDS` have failed and they are at least half of the records processed so far (so a
  systematic failure stops within seconds, not after a fraction of the run) — unless `--max-bad-fraction` itself
  allows half or more to fail.

`--on-bad-record error` stops at the first one. Either way the message names the file, the record (index and id),
the field and what to do. Only the standard library is used here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tive.errors import DataError, TiveError

ON_BAD_RECORD = ("skip", "error")
DEFAULT_MAX_BAD_FRACTION = 0.01
MIN_BAD_RECORDS = 10


class BadRecords:
    """The per-record failures of one stage, under one policy.

    Args:
        stage: the stage's name, for messages ("prepare", "warmup", "features").
        path: the input file (for messages).
        mode: "skip" or "error".
        max_fraction: the share of `total` that may fail before the stage stops.
        total: how many records the stage works on.
        deferred: the caller checks the cap itself, on counts summed over the ranks of a launch (`check_counts`),
            so that every rank stops at the same step with the same message: `fail` and `done` only count.
    """

    def __init__(self, stage: str, path: Path | str, mode: str, max_fraction: float, total: int,
                 deferred: bool = False) -> None:
        check_policy(mode, max_fraction)
        self.stage = stage
        self.path = str(path)
        self.mode = mode
        self.max_fraction = max_fraction
        self.total = total
        self.processed = 0
        self.reasons: dict[int, str] = {}
        self._first: str | None = None
        self.deferred = deferred

    def fail(self, index: int, record_id: Any, field: str | None, problem: str, hint: str = "") -> None:
        """Record that record `index` failed. In "error" mode, or when failures are no longer rare, raise."""
        if self.mode == "error":
            raise DataError(self.path, index, record_id, field, problem,
                            hint or "fix the record, or pass --on-bad-record skip to skip such records")
        if index not in self.reasons:
            self.reasons[index] = problem
            if self._first is None:
                where = f"record {index}" + (f" (id {record_id!r})" if record_id is not None else "")
                self._first = f"{where}, field {field!r}: {problem}" if field else f"{where}: {problem}"
        self._check()

    def done(self, count: int = 1) -> None:
        """`count` more records were processed (failed or not)."""
        self.processed += count
        self._check()

    @property
    def first(self) -> str | None:
        """The first failure, as messages name it ("record 3 (id 'a'), field 'image': ...")."""
        return self._first

    def _check(self) -> None:
        if not self.deferred:
            self.check_counts(len(self.reasons), self.processed, self._first)

    def over_cap(self, failed: int, processed: int) -> bool:
        """Whether `failed` failures among `processed` records are too many (the module docstring's rules)."""
        if failed <= MIN_BAD_RECORDS:
            return False
        too_many = failed > self.max_fraction * self.total
        systematic = self.max_fraction < 0.5 and failed * 2 >= max(processed, failed)
        return too_many or systematic

    def check_counts(self, failed: int, processed: int, first: str | None) -> None:
        """Stop (raise) when `failed` of `processed` records is over the cap; `first` names the first failure."""
        if not self.over_cap(failed, processed):
            return
        too_many = failed > self.max_fraction * self.total
        share = (f"{failed} of the first {max(processed, failed)} records"
                 if not too_many else f"{failed} of {self.total} records")
        raise TiveError(
            f"{self.stage}: {share} could not be used (first: {first}); failures this common mean something "
            "is wrong with the run (image root, chat template, model?) rather than with a few records. Fix it, or "
            f"raise --max-bad-fraction (now {self.max_fraction:g}) to skip them; --on-bad-record error stops at the "
            "first one"
        )

    def state(self) -> dict[str, Any]:
        """What `restore` needs to go on where this left off (a resumed stage keeps the failures it saw)."""
        return {"reasons": {str(index): reason for index, reason in self.reasons.items()},
                "processed": self.processed, "first": self._first}

    def restore(self, state: dict[str, Any]) -> None:
        """Add the failures and the processed count of a saved `state` (several states add up)."""
        for index, reason in state.get("reasons", {}).items():
            self.reasons.setdefault(int(index), reason)
        self.processed += int(state.get("processed", 0))
        if self._first is None:
            self._first = state.get("first")

    def summary(self) -> str:
        """One line: how many records were skipped and the commonest reasons."""
        if not self.reasons:
            return f"{self.stage}: no record skipped"
        kinds = Counter(reason_kind(reason) for reason in self.reasons.values())
        listed = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common(4))
        return f"{self.stage}: {len(self.reasons)} of {self.total} records skipped ({listed}); first: {self._first}"


def check_policy(mode: str, max_fraction: float) -> None:
    """Refuse an unknown mode or a fraction outside [0, 1]."""
    if mode not in ON_BAD_RECORD:
        raise TiveError(f"--on-bad-record {mode}: choose one of {', '.join(ON_BAD_RECORD)}")
    if not 0.0 <= max_fraction <= 1.0:
        raise TiveError(f"--max-bad-fraction {max_fraction}: must be a fraction in [0, 1]")


def reason_kind(reason: str) -> str:
    """A reason's kind, for counts: its words before the first quote, colon or path (`missing image`, ...)."""
    for stop in (" '", ' "', ":", " /", " ("):
        position = reason.find(stop)
        if position > 0:
            reason = reason[:position]
    return reason.strip()


def recheck(stage: str, failed: int, total: int, mode: str, max_fraction: float, ran_with: float | None = None,
            first: str | None = None, hint: str = "") -> str | None:
    """Check the failures a finished stage recorded against the policy of this command (the stage is not redone:
    tolerances decide whether a stage stops, not what it computes).

    Raises TiveError where the stage, run with this policy, would have stopped: any failure under
    `--on-bad-record error`; more than `MIN_BAD_RECORDS` and more than `max_fraction` of `total` otherwise.
    Returns a line to say when the policy is stricter than the one the stage ran with (`ran_with`; None: not
    known, then said whenever there are failures), else None.
    """
    check_policy(mode, max_fraction)
    named = f" (first: {first})" if first else ""
    if mode == "error" and failed:
        raise TiveError(
            f"{stage}: {failed} of {total} records were skipped when this stage ran{named}, and --on-bad-record "
            f"error stops at the first one; {hint or 'fix them and run the stage again'}, or pass --on-bad-record skip"
        )
    if failed > MIN_BAD_RECORDS and failed > max_fraction * total:
        raise TiveError(
            f"{stage}: {failed} of {total} records were skipped when this stage ran{named}, more than "
            f"--max-bad-fraction {max_fraction:g} allows; {hint or 'fix them and run the stage again'}, or raise "
            "--max-bad-fraction"
        )
    if failed and (ran_with is None or max_fraction < ran_with):
        return (f"{stage}: re-checked: its {failed} of {total} skipped records are within --max-bad-fraction "
                f"{max_fraction:g}" + (f" (it ran with {ran_with:g})" if ran_with is not None else ""))
    return None
