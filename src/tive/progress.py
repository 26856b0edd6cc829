"""Progress of long work, wherever the output goes.

On a terminal: a tqdm bar with rate and ETA. Elsewhere (a log file, SLURM's output, CI) a bar is noise, so a
line every `interval` seconds — done/total, rate, ETA — goes to stderr and to the run's log (`tive.log`), plus
one at the end. The rate is measured over the work done in this process after its first update (a resumed run
counts only what it computes, and the first batch's one-off costs — allocation, lazy initialisation — do not
skew it), and `Progress.rate` is what `tive estimate` and the ETA share.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tive")

DEFAULT_INTERVAL = 30.0


def format_seconds(seconds: float) -> str:
    """1h02m, 3m05s, 12s."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s"


class Progress:
    """Count work towards `total` and show it (see the module docstring).

    Args:
        desc: what is counted ("features", "warm-up").
        total: the amount of work in all.
        unit: its unit ("rec", "step").
        initial: work already done before this process started (a resumed run).
        interval: seconds between lines when the output is not a terminal (None: `DEFAULT_INTERVAL`).
        enabled: False on ranks other than 0 of a launch (one progress display per launch; every independent shard
            shows its own).
        others: for rank 0 of a launch, the work the other ranks have finished since this process started (read
            when a line is shown): the lines then count the launch's work, `total` included, at the launch's rate.
    """

    def __init__(self, desc: str, total: int, unit: str, initial: int = 0,
                 interval: float | None = None, enabled: bool = True, stream: Any = None,
                 others: Callable[[], int] | None = None) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.done = initial
        self.initial = initial
        self.interval = DEFAULT_INTERVAL if interval is None else interval
        self.enabled = enabled
        self.others = others
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self.last_line = self.started
        self._clock: tuple[float, int] | None = None  # (time, done) at the end of the first update
        self.bar = None
        self.postfix = ""
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)

    @property
    def rate(self) -> float:
        """Units per second in this process since its first update (before a second update: over the first)."""
        now = time.perf_counter()
        if self._clock is not None and self.done > self._clock[1]:
            since, done = self._clock
            return (self.done - done) / (now - since) if now > since else 0.0
        elapsed = now - self.started
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None

    def update(self, count: int = 1, postfix: str = "") -> None:
        self.done += count
        self.postfix = postfix or self.postfix
        if self._clock is None:
            self._clock = (time.perf_counter(), self.done)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(count)
            if postfix:
                self.bar.set_postfix_str(postfix)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line()

    def line(self) -> str:
        done, rate, eta = self.done, self.rate, self.eta()
        if self.others is not None:  # the launch's work: this process's and what the others have finished
            done += self.others()
            elapsed = time.perf_counter() - self.started
            rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else None
        text = f"{self.desc}: {done}/{self.total} {self.unit}, {rate:.3g} {self.unit}/s"
        text += f", ETA {format_seconds(eta)}" if eta is not None and done < self.total else ""
        return text + (f", {self.postfix}" if self.postfix else "")

    def _line(self) -> None:
        text = self.line()
        print(text, file=self.stream, flush=True)
        log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.initial and time.perf_counter() - self.started >= self.interval:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
