"""SLURM's variables mapped to torch.distributed's (`tive.launch.slurm_torch_env`), and the launch they describe."""

from __future__ import annotations

import pytest

from tive.errors import TiveError
from tive.launch import detect_launch, slurm_torch_env


def srun_task(procid: int, ntasks: int = 4, nodes: int = 1, job: str = "4242", **extra: str) -> dict[str, str]:
    """The variables SLURM gives task `procid` of `srun -n ntasks` (block distribution over `nodes` nodes)."""
    per_node = ntasks // nodes
    return {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(procid % per_node),
            "SLURM_NODEID": str(procid // per_node), "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": job,
            "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_STEP_ID": "0", **extra}


def test_one_node_gets_rank_world_local_rank_and_a_loopback_rendezvous_on_a_port_of_the_job():
    tasks = [slurm_torch_env(srun_task(procid)) for procid in range(4)]
    assert [(t["RANK"], t["WORLD_SIZE"], t["LOCAL_RANK"], t["LOCAL_WORLD_SIZE"]) for t in tasks] == [
        (str(p), "4", str(p), "4") for p in range(4)
    ]
    assert {t["MASTER_ADDR"] for t in tasks} == {"127.0.0.1"}
    ports = {t["MASTER_PORT"] for t in tasks}
    assert len(ports) == 1  # every task of the job meets on the same port ...
    port = int(ports.pop())
    assert 1024 <= port < 32768  # ... a listening port outside Linux's ephemeral range
    other_job = int(slurm_torch_env(srun_task(0, job="4243"))["MASTER_PORT"])
    assert other_job != port  # two jobs on one node do not collide


def test_the_environments_master_address_and_port_are_kept():
    env = slurm_torch_env(srun_task(1, MASTER_ADDR="node017", MASTER_PORT="31337"))
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node017", "31337")


def test_several_nodes_need_master_addr_and_say_how_to_set_it():
    with pytest.raises(TiveError, match=r"export MASTER_ADDR=\$\(scontrol show hostnames \$SLURM_JOB_NODELIST"):
        slurm_torch_env(srun_task(5, ntasks=8, nodes=2))
    env = slurm_torch_env(srun_task(5, ntasks=8, nodes=2, MASTER_ADDR="node001"))
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("5", "8", "1", "node001")
    assert env["LOCAL_WORLD_SIZE"] == "4"


@pytest.mark.parametrize("node, expected", [(0, "2"), (2, "2"), (3, "1"), (4, None)])
def test_local_world_size_comes_from_the_tasks_on_this_node(node: int, expected: str | None):
    env = slurm_torch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "7", "SLURM_NNODES": "4", "SLURM_NODEID": str(node),
                           "SLURM_TASKS_PER_NODE": "2(x3),1", "MASTER_ADDR": "node001"})
    assert env.get("LOCAL_WORLD_SIZE") == expected


def test_not_a_slurm_task_is_refused():
    with pytest.raises(TiveError, match="SLURM_PROCID"):
        slurm_torch_env({"SLURM_JOB_ID": "1"})


def test_the_exported_variables_still_describe_the_slurm_launch():
    """After the warm-up exports torchrun's variables, later stages of the same process still see SLURM task 1 of 4
    (their chunk labels and the rank that merges do not change); torchrun inside an allocation stays torchrun."""
    task = srun_task(1)
    before = detect_launch(env=task)
    after = detect_launch(env={**task, **slurm_torch_env(task)})
    assert before == after
    assert (after.rank, after.world, after.local_rank, after.kind) == (1, 4, 1, "slurm")
    torchrun_in_job = {**task, "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}
    assert detect_launch(env=torchrun_in_job).kind == "torchrun"


# What Slurm's documentation lists for the batch script of `sbatch --ntasks=8` (sbatch(1), OUTPUT ENVIRONMENT
# VARIABLES): the allocation's task count, and SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID of the one process that
# runs the script; no SLURM_STEP_ID, which srun(1) sets in the tasks of a step.
def sbatch_script(ntasks: int = 8, **extra: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": "4242", "SLURM_JOBID": "4242", "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
            "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node001",
            "SLURM_TASKS_PER_NODE": str(ntasks), "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_TASK_PID": "1234", "SLURM_SUBMIT_DIR": "/home/u", "SLURM_CPUS_ON_NODE": "64", **extra}


def srun_step_task(procid: int, ntasks: int = 4, step: str = "0") -> dict[str, str]:
    """A task of `srun -n ntasks` inside an allocation (srun(1): the step's ids and counts on top of the job's)."""
    return {**sbatch_script(8), **srun_task(procid, ntasks), "SLURM_STEP_ID": step, "SLURM_STEPID": step,
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": "node001",
            "SLURM_STEP_TASKS_PER_NODE": str(ntasks)}


def test_an_allocation_without_srun_is_one_process_and_says_so():
    """`sbatch --ntasks=8` running `python -m tive ...` once: one process, not rank 0 of 8 waiting for 7 others."""
    launch = detect_launch(env=sbatch_script(8))
    assert (launch.rank, launch.world, launch.kind) == (0, 1, "single")
    assert "SLURM allocation of 8 tasks" in launch.describe() and "srun" in launch.describe()


def test_the_tasks_of_an_srun_step_are_its_ranks():
    launches = [detect_launch(env=srun_step_task(procid)) for procid in range(4)]
    assert [(launch.rank, launch.world, launch.kind) for launch in launches] == [(p, 4, "slurm") for p in range(4)]
    assert launches[2].describe() == "rank 2 of 4 (slurm)"


@pytest.mark.parametrize("inside", ["sbatch", "srun -n 1"])
def test_torchrun_inside_an_allocation_is_torchrun_on_every_rank(inside: str):
    """`torchrun --nproc-per-node 2` in the batch script of `sbatch --ntasks=2` (rank 0's RANK and WORLD_SIZE equal
    the allocation's SLURM_PROCID and SLURM_NTASKS), or in a one-task srun step."""
    job = sbatch_script(2) if inside == "sbatch" else srun_step_task(0, ntasks=1)
    launches = [detect_launch(env={**job, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in (0, 1)]
    assert [(launch.rank, launch.world, launch.kind) for launch in launches] == [(0, 2, "torchrun"), (1, 2, "torchrun")]


def test_an_array_task_in_its_batch_script_is_a_shard():
    env = sbatch_script(1, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="4",
                        SLURM_ARRAY_JOB_ID="4000")
    launch = detect_launch(env=env)
    assert (launch.rank, launch.world, launch.kind) == (3, 4, "slurm-array")


def test_features_in_an_allocation_without_srun_compute_everything(small_run, tmp_path, monkeypatch):
    """Before, the process took itself for rank 0 of 8, computed chunk 0 and waited for ranks that do not exist."""
    import shutil

    from tests.conftest import small_options
    from tive.config import FeaturesOptions
    from tive.stages import run_features

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    shutil.rmtree(run / "features")
    for name, value in sbatch_script(8).items():
        monkeypatch.setenv(name, value)
    options = small_options(run)[2]
    meta = run_features(run, FeaturesOptions(**{**options.__dict__, "wait_timeout": 5.0}))
    assert meta["complete"] and meta["shards"] == 1
    owners = {entry["computed_by"] for entry in meta["chunks"]}
    assert len(owners) == 1 and owners.pop().startswith("one process (a SLURM allocation of 8 tasks without srun")
