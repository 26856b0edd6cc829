"""Progress where the output goes: lines with rate and ETA when it is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import logging

from tive.progress import Progress, format_seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_a_line_every_interval_with_rate_and_eta(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr("tive.progress.time.perf_counter", lambda: now[0])
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="tive"):
        progress = Progress("features", 100, "rec", interval=30, stream=stream)
        for t, count in ((10, 10), (20, 20), (40, 20), (45, 10), (70, 40)):
            now[0] = float(t)
            progress.update(count)
        # t=10 starts the rate's clock (the first update's one-off costs do not count); lines at t=40 and t=70
        progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "features: 50/100 rec, 1.33 rec/s, ETA 38s"
    assert lines[1].startswith("features: 100/100 rec, 1.5 rec/s") and "ETA" not in lines[1]
    assert [r.getMessage() for r in caplog.records] == lines  # the same lines go to tive.log


def test_on_a_terminal_a_bar_and_no_lines(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="tive"):
        with Progress("warm-up", 5, "step", stream=stream) as progress:
            for _ in range(5):
                progress.update(1, postfix="loss 1.0")
    assert "warm-up" in stream.getvalue() and "5/5" in stream.getvalue()
    assert not caplog.records


def test_disabled_progress_counts_but_shows_nothing():
    stream = io.StringIO()
    progress = Progress("features", 10, "rec", interval=0, enabled=False, stream=stream)
    progress.update(4)
    progress.close()
    assert stream.getvalue() == "" and progress.done == 4


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
