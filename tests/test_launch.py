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
            "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})", **extra}


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
