"""`python tests/paused_tive.py ARGS...`: `tive ARGS...` with pause points injected from outside, for race tests.

The races between processes that complete the feature store are made to happen every time by pausing one process
at a chosen point until another has reached its own point. The points are wrapped around tive's functions here, by
name, so the same test runs (and must fail) on code that has no pause points of its own. TIVE_TEST_PAUSES holds a
JSON object of what this process does (under torchrun, the object under "rank R" for rank R):

- "compute_after": [paths] — before computing its chunks, wait until every path exists;
- "fresh_sync_after": path — before a manifest sync that clears values (`fresh=True`), wait until it exists;
- "complete_barrier": [mine, other] — before completing the store, create `mine` and wait until `other` exists;
- "oom_at_forward": n — the warm-up's n-th forward pass (from 1) runs out of memory, as a GPU would.

Each wait gives up after 120 s (so a run that never reaches the other point still ends).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

WAIT_SECONDS = 120.0


def _wait_for(*paths: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not all(Path(path).exists() for path in paths) and time.monotonic() < deadline:
        time.sleep(0.05)


def _before(function: Callable[..., Any], pause: Callable[..., None]) -> Callable[..., Any]:
    @functools.wraps(function)
    def paused(*args: Any, **kwargs: Any) -> Any:
        pause(*args, **kwargs)
        return function(*args, **kwargs)

    return paused


def install(pauses: dict[str, Any]) -> None:
    """Wrap tive's functions with the pauses asked for (every module that holds the function by name)."""
    import importlib

    import tive.stages.features as features

    if "compute_after" in pauses:
        features._compute = _before(features._compute, lambda *a, **k: _wait_for(*pauses["compute_after"]))
    if "fresh_sync_after" in pauses:
        def pause_fresh(*args: Any, fresh: bool = False, **kwargs: Any) -> None:
            if fresh:
                _wait_for(pauses["fresh_sync_after"])

        for name in ("tive.stages.features", "tive.features.completion"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "sync_manifest"):
                module.sync_manifest = _before(module.sync_manifest, pause_fresh)
    if "complete_barrier" in pauses:
        mine, other = pauses["complete_barrier"]

        def barrier(*args: Any, **kwargs: Any) -> None:
            Path(mine).touch()
            _wait_for(other)

        features.complete_features = _before(features.complete_features, barrier)


    if "oom_at_forward" in pauses:
        import torch

        import tive.model.encode as encode

        calls = {"n": 0}
        loss = encode.answer_loss_per_record

        def out_of_memory(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == pauses["oom_at_forward"]:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return loss(*args, **kwargs)

        encode.answer_loss_per_record = out_of_memory


if __name__ == "__main__":
    pauses = json.loads(os.environ.get("TIVE_TEST_PAUSES", "{}"))
    install(pauses.get(f"rank {os.environ['RANK']}", {}) if "RANK" in os.environ else pauses)
    from tive.cli import main

    sys.exit(main(sys.argv[1:]))
