"""The warm-up's distributed path: launches it refuses, plain `srun`, a rank without records, resume, out of memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.test_distributed import free_port, torchrun
from tive.cli import main
from tive.config import WarmupOptions
from tive.errors import TiveError
from tive.launch import Launch
from tive.stages import run_warmup
from tive.stages.warmup import check_launch

# The launchers' variables, cleared so that each test sets only its own.
LAUNCH_VARIABLES = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NNODES", "SLURM_JOB_ID",
                    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_STEP_ID",
                    "SLURM_STEP_NUM_TASKS", "TIVE_LAUNCH"]
PAUSED_TIVE = Path(__file__).with_name("paused_tive.py")
# The warm-up of tests/test_distributed.py's two-rank test, as flags.
WARMUP_FLAGS = ["--model", "tiny", "--seed", "1", "--epochs", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def prepared(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 140-record run, prepared (tests copy it)."""
    run = tmp_path_factory.mktemp("prepared") / "run"
    assert main(["prepare", str(small_data), "--out", str(run), "--images", str(small_data.parent / "images"),
                 "--task-field", "dataset"]) == 0
    return run


@pytest.fixture(scope="module")
def warmed(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prepared`, warmed up in one process with WARMUP_FLAGS (one thread, like each rank of the launches)."""
    run = tmp_path_factory.mktemp("warmed") / "run"
    shutil.copytree(prepared, run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["warmup", str(run), *WARMUP_FLAGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def warmup_json(run: Path) -> dict:
    return json.loads((run / "warmup" / "warmup.json").read_text())


def assert_same_adapter(run: Path, reference: Path, tolerance: float) -> None:
    """Every adapter tensor equal to the reference's within `tolerance` relative to its largest value."""
    from safetensors.torch import load_file

    one = load_file(reference / "warmup" / "adapter" / "adapter_model.safetensors")
    two = load_file(run / "warmup" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        difference = (one[key] - two[key]).abs().max() / one[key].abs().max().clamp(min=1e-12)
        assert difference <= tolerance, (key, float(difference))


# ------------------------------------------------------------------------------------------ refused launches
def test_more_ranks_than_records_per_step_is_refused_before_anything_starts(prepared: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """16 ranks (torchrun's variables) with --batch-size 8: refused, naming --batch-size, before the ranks meet."""
    run = copy_of(prepared, tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def launch(device: str) -> None:  # the ranks would meet here (and wait for 15 that never come)
        raise AssertionError("the warm-up started a 16-rank launch it cannot train")

    monkeypatch.setattr("tive.stages.warmup.make_accelerator", launch)
    with pytest.raises(TiveError, match=r"--batch-size 8: .* 16 ranks .* pass --batch-size 16 or more"):
        run_warmup(run, WarmupOptions(model="tiny", batch_size=8, device="cpu"))
    assert not (run / "warmup").exists()


def test_independent_shards_refuse_a_warmup_to_do_and_skip_a_finished_one(prepared: Path, warmed: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    """A SLURM array task cannot train its own warm-up (every task would): it says to run the warm-up first; once
    it is done with the same settings, the task skips it as before."""
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    options = WarmupOptions(model="tiny", seed=1, epochs=2, device="cpu")
    with pytest.raises(TiveError, match=r"shard 1 of 2 \(slurm-array\).*run the warm-up first in one process or one "
                                        r"torchrun / srun launch"):
        run_warmup(copy_of(prepared, tmp_path / "todo"), options)
    done = copy_of(warmed, tmp_path / "done")
    assert run_warmup(done, options) == warmup_json(done)
    # `--shard I/K` (processes started by hand) is the same kind of launch
    with pytest.raises(TiveError, match="run the warm-up first"):
        check_launch(Launch(0, 3, 0, "shard"), 8)


def test_negative_loader_workers_are_refused(tmp_path: Path):
    with pytest.raises(TiveError, match=r"--loader-workers -1: must be at least 0"):
        run_warmup(tmp_path / "run", WarmupOptions(model="tiny", loader_workers=-1))


# ------------------------------------------------------------------------------------------ out of memory
def test_out_of_memory_in_a_step_says_what_to_lower(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from transformers import LlavaForConditionalGeneration

    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", forward)
    with pytest.raises(TiveError) as raised:
        run_warmup(copy_of(prepared, tmp_path), WarmupOptions(model="tiny", device="cpu", per_device_batch_size=4))
    message = str(raised.value)
    assert "out of memory" in message and "step 1" in message
    for option in ("--per-device-batch-size (now 4", "--gradient-checkpointing", "--max-length"):
        assert option in message


# ------------------------------------------------------------------------------------------ resume
@pytest.fixture
def dropout_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint with attention dropout 0.3 in its text model: the warm-up's result depends on the RNG."""
    from transformers import AutoConfig

    model = tmp_path / "dropout_model"
    shutil.copytree(tiny_model_dir, model)
    config = AutoConfig.from_pretrained(model)
    config.text_config.attention_dropout = 0.3
    config.save_pretrained(model)
    return model


def train_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "warmup" / "train_log.jsonl").read_text().splitlines()]


def test_an_interrupted_warmup_resumes_to_the_uninterrupted_result(prepared: Path, dropout_model: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """11 records, batch 2: 6 steps, checkpoints after steps 2 and 4; interrupted in step 6 (after step 5 was
    logged), rerun: the log has every step once and the same losses and learning rates, and the adapter is the
    uninterrupted run's byte for byte — dropout included — without the scheduler's warning."""
    import tive.model.encode

    options = WarmupOptions(model=str(dropout_model), epochs=1, batch_size=2, learning_rate=1e-2, lora_rank=4,
                            seed=0, device="cpu", checkpoint_steps=2)
    whole = copy_of(prepared, tmp_path / "whole")
    reference = run_warmup(whole, options)
    assert reference["steps"] == 6

    real = tive.model.encode.answer_loss_per_record
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # one forward pass a step: this is step 6
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = copy_of(prepared, tmp_path / "resumed")
    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(run, options)
    monkeypatch.setattr(tive.model.encode, "answer_loss_per_record", real)
    assert [entry["step"] for entry in train_log(run)] == [1, 2, 3, 4, 5]
    assert torch.load(run / "warmup" / "checkpoint" / "state.pt", weights_only=False)["step"] == 4

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run_warmup(run, options)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert train_log(run) == train_log(whole)  # steps 1..6 once each, same losses and learning rates
    assert resumed["adapter_sha256"] == reference["adapter_sha256"]
    assert not (run / "warmup" / "checkpoint").exists()


# ------------------------------------------------------------------------------------------ several processes
@pytest.mark.distributed
def test_plain_srun_tasks_train_together_like_one_process(warmed: Path, prepared: Path, tmp_path: Path):
    """Two tasks started as `srun -n 2` would (SLURM's variables only): they form one DDP launch and give the
    single process's adapter (the tolerance of tests/test_distributed.py's torchrun test)."""
    run = copy_of(prepared, tmp_path)
    port = str(free_port())
    base = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "tive", "warmup", str(run), *WARMUP_FLAGS],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**base, "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": str(task),
                 "SLURM_LOCALID": str(task), "SLURM_NNODES": "1", "SLURM_JOB_ID": "777", "MASTER_PORT": port,
                 "SLURM_STEP_ID": "0"},
        )
        for task in (0, 1)
    ]
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-2000:] for _, err in outputs]
    warm, one = warmup_json(run), warmup_json(warmed)
    assert warm["world"] == 2
    assert warm["batch"] == "effective batch 8 = 4 per device x 2 rank(s) x 1 accumulation step(s)"
    assert warm["steps"] == one["steps"] and warm["settings"] == one["settings"]
    assert_same_adapter(run, warmed, 1e-4)


@pytest.mark.distributed
def test_a_rank_whose_first_records_all_fail_still_trains(small_data: Path, tmp_path: Path):
    """Two ranks, --batch-size 4: the images of rank 1's records of the first step are broken after prepare. Rank 1
    takes part in that step with a zero-weight pass on a later record (DDP needs its backward) instead of failing,
    and the result is the single process's on the same records."""
    from tive.model.warmup import epoch_orders, warmup_sample
    from tive.rundir import candidate_rows, read_manifest

    data = tmp_path / "data" / small_data.name
    shutil.copytree(small_data.parent, data.parent)
    runs = {name: tmp_path / name for name in ("one", "two")}
    assert main(["prepare", str(data), "--out", str(runs["one"]), "--images", str(data.parent / "images"),
                 "--task-field", "dataset"]) == 0
    shutil.copytree(runs["one"], runs["two"])
    # The first global batch (the stage's own sample and order) and rank 1's half of it.
    rows = candidate_rows(read_manifest(runs["one"]))
    sample = [rows[p]["index"] for p in warmup_sample([row["task"] for row in rows], 0.08, 1)]
    first = [sample[p] for p in epoch_orders(len(sample), 2, 1)[0][:4]]
    raw = json.loads(data.read_text())
    images = {index: raw[index].get("image") for index in first}
    broken = {images[index] for index in first[2:]}
    assert None not in broken and images[first[0]] not in broken  # rank 1's records have images; rank 0 keeps one
    for image in broken:
        (data.parent / "images" / image).write_bytes(b"not an image")
    flags = ["warmup", "--batch-size", "4", *WARMUP_FLAGS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([flags[0], str(runs["one"]), *flags[1:]]) == 0
    finally:
        torch.set_num_threads(threads)
    result = torchrun(flags[0], str(runs["two"]), *flags[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = warmup_json(runs["one"]), warmup_json(runs["two"])
    assert two["batch"] == "effective batch 4 = 2 per device x 2 rank(s) x 1 accumulation step(s)"
    assert set(first[2:]) <= {int(index) for index in two["skipped"]}
    assert two["skipped"] == one["skipped"] and two["steps"] == one["steps"] == 6
    assert_same_adapter(runs["two"], runs["one"], 1e-4)


def _first_batch_images(data: Path, run: Path, batch_size: int = 4) -> tuple[list[int], dict[int, str]]:
    """The records of the warm-up's first global batch (the stage's own sample and order) and their images."""
    from tive.model.warmup import epoch_orders, warmup_sample
    from tive.rundir import candidate_rows, read_manifest

    rows = candidate_rows(read_manifest(run))
    sample = [rows[p]["index"] for p in warmup_sample([row["task"] for row in rows], 0.08, 1)]
    first = [sample[p] for p in epoch_orders(len(sample), 2, 1)[0][:batch_size]]
    raw = json.loads(data.read_text())
    return first, {index: raw[index].get("image") for index in first}


def _srun_tasks(args: list[str], n: int = 2, pauses: list[dict] | None = None) -> list[tuple[int, str, str]]:
    """`srun -n N python -m tive ARGS` on this machine: (return code, stdout, stderr) of each task; `pauses`: per
    task, what tests/paused_tive.py injects."""
    port = str(free_port())
    base = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    tasks = [
        subprocess.Popen([sys.executable, *([str(PAUSED_TIVE)] if pauses else ["-m", "tive"]), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**base, "OMP_NUM_THREADS": "1", "SLURM_NTASKS": str(n), "SLURM_PROCID": str(task),
                              "SLURM_LOCALID": str(task), "SLURM_NNODES": "1", "SLURM_JOB_ID": "778",
                              "SLURM_STEP_ID": "0", "MASTER_PORT": port,
                              "TIVE_TEST_PAUSES": json.dumps(pauses[task] if pauses else {})})
        for task in range(n)
    ]
    outputs = [task.communicate(timeout=300) for task in tasks]
    return [(task.returncode, out, err) for task, (out, err) in zip(tasks, outputs)]


@pytest.mark.distributed
def test_a_rank_that_stops_stops_every_rank_with_the_same_message(small_data: Path, tmp_path: Path):
    """Two plain srun tasks, --on-bad-record error: rank 1's first record has a broken image. Before, rank 1
    stopped alone and rank 0 was left in the step's collective (a traceback when the connection closed, or a hang
    until the process group's timeout). Every rank learns of it in the step's status exchange and all stop with the
    same message, no traceback."""
    data = tmp_path / "data" / small_data.name
    shutil.copytree(small_data.parent, data.parent)
    run = tmp_path / "run"
    assert main(["prepare", str(data), "--out", str(run), "--images", str(data.parent / "images"),
                 "--task-field", "dataset"]) == 0
    first, images = _first_batch_images(data, run)
    assert images[first[2]] and images[first[2]] not in {images[first[0]], images[first[1]]}
    (data.parent / "images" / images[first[2]]).write_bytes(b"not an image")
    results = _srun_tasks(["warmup", str(run), "--batch-size", "4", "--on-bad-record", "error", *WARMUP_FLAGS])
    assert [code for code, _, _ in results] == [2, 2], [err[-2000:] for _, _, err in results]
    last_lines = [err.strip().splitlines()[-1] for _, _, err in results]
    assert last_lines[0] == last_lines[1], last_lines
    assert "rank 1 of 2" in last_lines[0] and "step 1" in last_lines[0] and f"record {first[2]}" in last_lines[0]
    assert all("Traceback" not in err for _, _, err in results)
    assert not (run / "warmup" / "warmup.json").exists()


@pytest.mark.distributed
def test_a_rank_lost_inside_a_collective_ends_its_peers_with_a_clear_message(prepared: Path, tmp_path: Path):
    """Rank 1 runs out of memory in its second forward pass, where no status exchange can reach it: rank 0 is then
    inside DDP's own gradient all-reduce. Rank 1 says what to lower; rank 0 ends when the collective fails (here
    the closed connection; on a hung peer the process group's timeout) with a message, not a traceback."""
    run = copy_of(prepared, tmp_path)
    results = _srun_tasks(["warmup", str(run), *WARMUP_FLAGS], pauses=[{}, {"oom_at_forward": 2}])
    (code0, _, err0), (code1, _, err1) = results
    assert (code0, code1) == (2, 2), [err0[-2000:], err1[-2000:]]
    assert "out of memory" in err1 and "step 2" in err1
    assert "rank 0 of 2 lost the other ranks at step 2" in err0 and "Traceback" not in err0 + err1


@pytest.mark.distributed
def test_the_bad_record_cap_is_the_launchs_not_each_ranks(small_data: Path, tmp_path: Path):
    """--warmup-fraction 1 (140 records), --max-bad-fraction 0.05 (7 records): the images of 8 records in each
    rank's share of the first steps are broken after prepare (more records share those images). Before, each rank
    held its own count against a cap of its own share (70 records): each stopped when its own count passed it, with
    its own message, wherever the other one was. The cap is the launch's: both ranks check the counts summed over
    the ranks at each step and stop at the same step with the same message."""
    from tive.model.warmup import epoch_orders
    from tive.rundir import candidate_rows, read_manifest

    data = tmp_path / "data" / small_data.name
    shutil.copytree(small_data.parent, data.parent)
    run = tmp_path / "run"
    assert main(["prepare", str(data), "--out", str(run), "--images", str(data.parent / "images"),
                 "--task-field", "dataset"]) == 0
    rows = candidate_rows(read_manifest(run))
    order = [rows[p]["index"] for p in epoch_orders(len(rows), 2, 1)[0]]
    raw = json.loads(data.read_text())
    steps = [order[s * 8 : (s + 1) * 8] for s in range(8)]
    chosen = {rank: [index for step in steps for index in step[rank * 4 : rank * 4 + 1]] for rank in (0, 1)}
    broken = {raw[index]["image"] for rank in (0, 1) for index in chosen[rank] if raw[index].get("image")}
    assert len(broken) >= 11
    for image in broken:
        (data.parent / "images" / image).write_bytes(b"not an image")
    results = _srun_tasks(["warmup", str(run), "--warmup-fraction", "1", "--max-bad-fraction", "0.05",
                           *WARMUP_FLAGS])
    assert [code for code, _, _ in results] == [2, 2], [err[-2000:] for _, _, err in results]
    last_lines = [err.strip().splitlines()[-1] for _, _, err in results]
    assert last_lines[0] == last_lines[1] and "could not be used" in last_lines[0], last_lines
