"""Completing the feature store is one operation with one owner: the races between processes that finish together.

Each race is made to happen every time with real processes paused at chosen points (`tests/paused_tive.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_distributed import FEATURE_FLAGS, free_port, warm_run  # noqa: F401 (fixture)
from tests.test_distributed_run import _run_flags

pytestmark = pytest.mark.distributed

PAUSED_TIVE = str(Path(__file__).with_name("paused_tive.py"))


def _env(pauses: dict) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TIVE_TEST_PAUSES": json.dumps(pauses)}


def _data_of(run: Path) -> Path:
    return Path(json.loads((run / "prepare.json").read_text())["data"])


def _without_selection(run: Path) -> Path:
    """The warmed-up run without the values and selection its copy came with."""
    for name in ("select.json", "subset.json", "tasks.json", "report.html"):
        (run / name).unlink(missing_ok=True)
    return run


def assert_manifest_describes_the_subset(run: Path) -> None:
    """The manifest's values and selections are the ones the standing subset was made from."""
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert ok and all(row["value"] is not None for row in ok), "values were cleared under the subset"
    subset = json.loads((run / "subset.json").read_text())
    chosen = [row for row in rows if row["selected"]]
    assert [row["id"] for row in chosen] == [record["id"] for record in subset]


def test_a_late_rank_never_clears_what_rank_0_scored_and_selected(warm_run: Path):
    """Under torchrun rank 1 finishes its chunks last. Before, it then merged the store and cleared the manifest's
    values and selections (its fresh sync paused here until rank 0 had selected) under a standing subset. Rank 0
    alone completes the store, and only once the manifest describes it."""
    _without_selection(warm_run)
    rank0_chunks = [str(warm_run / "features" / "chunks" / f"chunk_{c:06d}.json") for c in (0, 2, 4)]
    pauses = {"rank 1": {"compute_after": rank0_chunks, "fresh_sync_after": str(warm_run / "select.json")}}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", PAUSED_TIVE,
               *_run_flags(_data_of(warm_run), warm_run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env(pauses))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("select: 28 records") == 1
    assert_manifest_describes_the_subset(warm_run)
    meta = json.loads((warm_run / "features" / "meta.json").read_text())
    assert meta["completed_by"]["process"] == "rank 0 of 2 (torchrun)"


def test_two_shards_finishing_together_complete_score_and_select_once(warm_run: Path, tmp_path: Path):
    """Two independent shards reach the completion at the same moment (a barrier here). Before, both merged, both
    scored and both selected, one reading the manifest the other had just cleared. One claims the completion; it
    alone scores and selects, and the other says who does."""
    flags = _run_flags(_data_of(_without_selection(warm_run)), warm_run)
    ready = [str(tmp_path / f"ready{shard}") for shard in (0, 1)]
    processes = [
        subprocess.Popen([sys.executable, PAUSED_TIVE, *flags, "--shard", f"{shard}/2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env({"complete_barrier": [ready[shard],
                                                                                         ready[1 - shard]]}))
        for shard in (0, 1)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    selected = [out.count("select: 28 records") for out, _ in outputs]
    assert sorted(selected) == [0, 1], [out[-2000:] for out, _ in outputs]
    other = outputs[selected.index(0)][0]
    meta = json.loads((warm_run / "features" / "meta.json").read_text())
    winner = meta["completed_by"]["process"]
    assert winner == f"shard {selected.index(1)} of 2 (shard)"
    assert f"{winner}" in other and "scores and selects" in other
    assert_manifest_describes_the_subset(warm_run)


def _claim(store_dir: Path, **owner) -> Path:
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / "completing.json"
    path.write_text(json.dumps({"process": "shard 1 of 2 (shard)", "token": "theirs", **owner}))
    return path


def test_one_claim_at_a_time_and_an_abandoned_one_is_taken_over(tmp_path: Path):
    """The claim is exclusive; a claim whose process has ended on this host is taken over at once, one from
    another host once it has shown no progress for the timeout, and a live one never."""
    import socket

    from tive.features.completion import owner_of_this_process
    from tive.features.store import FeatureStore

    store = FeatureStore(tmp_path / "features")
    mine = owner_of_this_process("one process")
    assert store.claim_completion(mine, 60.0)
    assert not store.claim_completion({**mine, "token": "another"}, 60.0)  # held (by a live process: this one)
    store.release_completion(mine)
    assert store.completion_claim() is None

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _claim(store.dir, host=socket.gethostname(), pid=int(dead.stdout))
    assert store.claim_completion(mine, 3600.0)  # its process has ended: taken over without waiting
    assert store.completion_claim()["token"] == mine["token"]
    store.release_completion(mine)

    elsewhere = _claim(store.dir, host="node-that-is-not-here", pid=1)
    assert not store.claim_completion(mine, 60.0)  # cannot be checked from here, and recent: it stands
    os.utime(elsewhere, (0, os.stat(elsewhere).st_mtime - 120))
    assert store.claim_completion(mine, 60.0)  # no progress for longer than the timeout: taken over
    assert not list(store.dir.glob(".claim.*"))


def test_a_shard_that_loses_the_claim_to_one_that_has_just_finished_names_the_finisher(tmp_path: Path, monkeypatch):
    """CI saw it once: the losing shard's claim failed, then the winner completed the store and released its claim
    before the loser read who held it. The loser went on with the meta.json of before (no owner) and said only
    "the shard that completes the store scores and selects". It looks again instead: the store is complete now,
    and its meta.json names who completed it."""
    from tive.features import completion

    done = {"complete": True, "completed_by": {"process": "shard 0 of 2 (shard)"}}

    class JustFinished:
        """A store whose completion another shard held at our claim and released before we asked who held it."""

        def __init__(self) -> None:
            self.state: dict = {"request": {"feature_dtype": "float16"}}

        def meta(self) -> dict:
            return self.state

        def claim_completion(self, owner: dict, stale_after: float) -> bool:
            self.state = done  # the holder finishes and lets go in between
            return False

        def completion_claim(self) -> None:
            return None

        claim_path = tmp_path / "completing.json"  # absent: nobody holds the claim any more

    monkeypatch.setattr(completion, "chunk_records_of", lambda run_dir, store, meta: [])
    monkeypatch.setattr(completion, "sync_manifest", lambda run_dir, store, **_: store.meta())
    meta = completion.complete_store(tmp_path, JustFinished(), "shard 1 of 2 (shard)", wait=False, wait_timeout=60.0)
    assert meta == done
