"""`tive run` under a launcher: every rank takes its share, one process scores and selects, the launch succeeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import small_options
from tests.test_distributed import FEATURE_FLAGS, torchrun
from tive.cli import main

pytestmark = pytest.mark.distributed


def _run_flags(data: Path, out: Path) -> list[str]:
    prepare, warmup, _, select = small_options(data)
    return ["run", str(data), "--out", str(out), "--images", prepare.images, "--task-field", prepare.task_field,
            "--model", "tiny", "--seed", str(warmup.seed), "--epochs", str(warmup.epochs), *FEATURE_FLAGS,
            "--budget", select.budget, "--select-seed", str(select.select_seed), "--device", "cpu"]


def test_tive_run_on_two_ranks_succeeds_and_selects_once(small_data: Path, small_run: Path, tmp_path: Path):
    """The README's command: `torchrun ... -m tive run`. Rank 0 prepares, both ranks warm up together and take
    their chunks, rank 0 completes the store, scores and selects; rank 1 stops after its chunks and says so."""
    out = tmp_path / "run"
    result = torchrun(*_run_flags(small_data, out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2 (torchrun) is done with its share of the features; rank 0 scores and selects" in result.stdout
    assert result.stdout.count("select: 28 records") == 1  # one process selected
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert {entry["computed_by"] for entry in meta["chunks"]} == {"rank 0 of 2 (torchrun)", "rank 1 of 2 (torchrun)"}
    # Same subset as the single process's run with the same options (the warm-up on two ranks matches one process
    # to float rounding, the selection by seed).
    subset = json.loads((out / "subset.json").read_text())
    single = json.loads((small_run / "subset.json").read_text())
    assert len(subset) == len(single) == 28
    assert [record["id"] for record in subset] == [record["id"] for record in single]
    assert (out / "report.html").is_file() and (out / "tasks.json").is_file()


def test_tive_run_as_shards_selects_in_the_last_shard(small_data: Path, tmp_path: Path, capsys):
    """Independent shards: the one that finds every chunk done completes the store, scores and selects; the others
    stop after their chunks. The warm-up is run first, once."""
    out = tmp_path / "run"
    flags = _run_flags(small_data, out)
    assert main([*flags, "--shard", "0/2"]) == 2  # shards cannot share one training: the warm-up comes first
    assert "independent shards cannot share one training; run the warm-up first" in capsys.readouterr().err
    assert not (out / "warmup").exists()
    assert main(["prepare", str(small_data), "--out", str(out), "--images", small_options(small_data)[0].images,
                 "--task-field", "dataset"]) == 0
    assert main(["warmup", str(out), "--model", "tiny", "--seed", "1", "--epochs", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*flags, "--shard", "0/2"]) == 0
    first = capsys.readouterr().out
    assert "shard 0 of 2 (shard) is done with its share of the features; the shard that completes the store" in first
    assert not (out / "tasks.json").exists()
    assert main([*flags, "--shard", "1/2"]) == 0
    assert "select: 28 records" in capsys.readouterr().out and (out / "subset.json").is_file()
