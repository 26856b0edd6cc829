"""One code path for one process, N ranks and N independent shards: the same bytes, each process its share."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SMALL_PROJ_DIM, small_options
from tive.cli import main
from tive.config import FeaturesOptions
from tive.errors import TiveError
from tive.stages import run_features, run_score

pytestmark = pytest.mark.distributed

# The options of the session's small run, as flags.
FEATURE_FLAGS = ["--proj-dim", str(SMALL_PROJ_DIM), "--chunk-size", "32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, **launch: str) -> subprocess.CompletedProcess:
    """`python -m tive ARGS` on `nproc` CPU ranks (standalone rendezvous unless `launch` gives other flags)."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in launch.items()] or ["--standalone"]
    command = [sys.executable, "-m", "torch.distributed.run", *flags, f"--nproc-per-node={nproc}", "-m", "tive", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def warm_run(small_run: Path, tmp_path: Path) -> Path:
    """The session's small run, warmed up, without features."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    shutil.rmtree(run / "features")
    return run


def chunk_owners(run: Path) -> dict[int, str]:
    meta = json.loads((run / "features" / "meta.json").read_text())
    return {entry["chunk"]: entry["computed_by"] for entry in meta["chunks"]}


def assert_same_features(run: Path, reference: Path) -> None:
    for name in ("features.npy", "norms.npy"):
        assert (run / "features" / name).read_bytes() == (reference / "features" / name).read_bytes(), name
    assert (run / "manifest.jsonl").read_text().count('"status": "ok"') == 140


def test_two_ranks_give_the_bytes_of_one_process_each_computing_its_share(warm_run: Path, small_run: Path):
    result = torchrun("features", str(warm_run), *FEATURE_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_features(warm_run, small_run)
    owners = chunk_owners(warm_run)
    assert owners == {c: f"rank {c % 2} of 2 (torchrun)" for c in range(5)}  # 140 records in chunks of 32


def test_two_nodes_with_c10d_rendezvous(warm_run: Path, small_run: Path):
    """Two "nodes" on one machine: `torchrun --nnodes 2 --node-rank 0|1 --rdzv-backend c10d`, one rank each."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=tive-test", "-m", "tive",
             "features", str(warm_run), *FEATURE_FLAGS],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert_same_features(warm_run, small_run)
    assert set(chunk_owners(warm_run).values()) == {"rank 0 of 2 (torchrun)", "rank 1 of 2 (torchrun)"}


def test_shards_started_by_hand_resume_with_another_count_and_are_completed_by_score(
    warm_run: Path, small_run: Path, capsys
):
    options = small_options(Path(json.loads((warm_run / "prepare.json").read_text())["data"]))[2]
    run_features(warm_run, type(options)(**{**options.__dict__, "shard": "1/3"}))  # chunks 1 and 4
    printed = capsys.readouterr().out
    assert "3 of 5 chunks still to compute (shards 0, 2 of 3)" in printed
    with pytest.raises(TiveError, match="not complete"):
        main_score_raising(warm_run)
    # The rest on two ranks (a different count): each takes the missing chunks it owns; the store completes.
    result = torchrun("features", str(warm_run), *FEATURE_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_features(warm_run, small_run)
    owners = chunk_owners(warm_run)
    assert owners[1] == owners[4] == "shard 1 of 3 (shard)"
    assert owners[0] == owners[2] == "rank 0 of 2 (torchrun)" and owners[3] == "rank 1 of 2 (torchrun)"


def main_score_raising(run: Path) -> None:
    run_score(run)


def test_slurm_array_tasks_are_shards(warm_run: Path, small_run: Path, monkeypatch: pytest.MonkeyPatch):
    options = small_options(Path(json.loads((warm_run / "prepare.json").read_text())["data"]))[2]
    for task in (0, 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task + 10))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        run_features(warm_run, options)
    assert_same_features(warm_run, small_run)  # the last shard to finish completed the store
    assert set(chunk_owners(warm_run).values()) == {"shard 0 of 2 (slurm-array)", "shard 1 of 2 (slurm-array)"}


def test_warmup_on_two_ranks_matches_one_process(small_data: Path, tmp_path: Path):
    """DDP over 2 CPU ranks (gloo), each with half of every batch: the adapter of one process, to float rounding."""
    from safetensors.torch import load_file

    runs = {}
    for name, ranks in (("one", 1), ("two", 2)):
        run = tmp_path / name
        common = ["--images", str(small_data.parent / "images"), "--task-field", "dataset"]
        assert main(["prepare", str(small_data), "--out", str(run), *common]) == 0
        args = ["warmup", str(run), "--model", "tiny", "--seed", "1", "--epochs", "2", "--device", "cpu"]
        if ranks == 1:
            torch.set_num_threads(1)
            assert main(args) == 0
        else:
            result = torchrun(*args)
            assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = run
    warm = {name: json.loads((run / "warmup" / "warmup.json").read_text()) for name, run in runs.items()}
    assert warm["two"]["batch"] == "effective batch 8 = 4 per device x 2 rank(s) x 1 accumulation step(s)"
    assert warm["one"]["batch"] == "effective batch 8 = 8 per device x 1 rank(s) x 1 accumulation step(s)"
    assert warm["one"]["steps"] == warm["two"]["steps"] and warm["one"]["settings"] == warm["two"]["settings"]
    np.testing.assert_allclose(warm["two"]["loss_last"], warm["one"]["loss_last"], rtol=1e-5)
    one = load_file(runs["one"] / "warmup" / "adapter" / "adapter_model.safetensors")
    two = load_file(runs["two"] / "warmup" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        difference = (one[key] - two[key]).abs().max() / one[key].abs().max().clamp(min=1e-12)
        assert difference <= 1e-4, (key, float(difference))


def test_every_shard_shows_its_progress_and_rank_0_the_launchs(warm_run: Path, capsys):
    """SLURM array tasks and shards by hand run alone: each shows its own progress (before, only shard 0 did and
    tasks 1..K-1 ran silent). Of a launch, rank 0 shows the launch's records, the other ranks' included."""
    options = small_options(warm_run)[2]
    for shard in (1, 0):
        run_features(warm_run, FeaturesOptions(**{**options.__dict__, "shard": f"{shard}/2",
                                                  "progress_interval": 0.001}))
        err = capsys.readouterr().err
        share = 64 if shard == 1 else 76  # chunks 1, 3 / 0, 2, 4 of 32, 32, 32, 32, 12 records
        assert f"features (shard {shard} of 2 (shard)): {share}/{share} rec" in err, err[-2000:]
    shutil.rmtree(warm_run / "features")
    result = torchrun("features", str(warm_run), *FEATURE_FLAGS, "--progress-interval", "0.001")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"features \(2 ranks\): \d+/140 rec", result.stderr), result.stderr[-3000:]
    assert "features: 64/64 rec" not in result.stderr  # rank 1 shows none


def test_rank_0_counts_the_launch_from_the_chunks_missing_at_the_start():
    """Rank 0's total is what the launch had to compute when the stage started: a peer that commits its chunks
    before rank 0's display opens (rank 0 loading slower) still counts, in the total and in the done count."""
    from tive.launch import Launch
    from tive.stages.features import _progress

    class Store:  # rank 1's chunks (1, 3) were committed before rank 0 opened its display
        def has_chunk(self, chunk: int) -> bool:
            return chunk in (1, 3)

    chunk_rows = [[{}] * 32, [{}] * 32, [{}] * 32, [{}] * 32, [{}] * 12]
    options = FeaturesOptions(progress_interval=30.0)
    launch = Launch(rank=0, world=2, kind="torchrun")
    progress = _progress(options, launch, Store(), chunk_rows, [0, 1, 2, 3, 4], n_records=76)
    assert progress.total == 140 and progress.others() == 64
    resumed = _progress(options, launch, Store(), chunk_rows, [0, 2, 4], n_records=76)  # 1, 3 done before: not ours
    assert resumed.total == 76 and resumed.others() == 0
