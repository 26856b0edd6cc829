"""Who this process is among the processes working on one run: its rank and how many there are.

One code path serves one process, N ranks and N independent jobs. The rank and world size come from the launcher:

- `torchrun` (and anything that sets the same variables): RANK, WORLD_SIZE, LOCAL_RANK;
- SLURM tasks of one step (`srun -n K`): SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID —
  trusted only inside a step (SLURM_STEP_ID set): the batch script of `sbatch --ntasks=8` also has SLURM_PROCID=0
  and SLURM_NTASKS=8, but it is one process, and is taken as one (saying so: the tasks start only with srun);
- SLURM array jobs (`sbatch --array=0-K-1`): SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT;
- `--shard I/K` for processes started by hand (several machines, a queue without SLURM).

Ranks of one launch run at the same time (torchrun, one srun step), so rank 0 can wait for the others' work and
finish the stage; shards (array jobs, `--shard`) run whenever they are scheduled, so none waits: the last one to
finish, or `tive score`, completes the store. No collective operation is needed for feature extraction; the ranks
meet only through files in the run directory, which must be on a filesystem they share.

A plain `srun` starts every task without torchrun, so nothing sets the variables `torch.distributed` reads: the
warm-up (the one stage that trains across ranks) exports them from SLURM's (`slurm_torch_env`) before it starts.

Only the standard library is used here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tive.errors import TiveError


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch.

    Attributes:
        rank: 0..world-1.
        world: how many processes share the work.
        local_rank: the rank on this machine (picks the GPU), 0 without a launcher.
        kind: "single", "torchrun", "slurm", "slurm-array" or "shard".
        note: what else the environment said, for `describe` (e.g. a SLURM allocation run without srun).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    kind: str = "single"
    note: str = ""

    @property
    def concurrent(self) -> bool:
        """Whether every rank runs at the same time (so rank 0 may wait for the others)."""
        return self.kind in ("torchrun", "slurm") and self.world > 1

    def owns(self, chunk: int) -> bool:
        """Whether this process computes `chunk` (chunks go to ranks round-robin: chunk c to rank c mod world)."""
        return chunk % self.world == self.rank

    def describe(self) -> str:
        """How this process is named in messages and chunk markers ("rank 2 of 8 (slurm)")."""
        if self.world == 1:
            return "one process" + (f" ({self.note})" if self.note else "")
        return f"{'shard' if self.kind in ('shard', 'slurm-array') else 'rank'} {self.rank} of {self.world} ({self.kind})"


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/K"` → (I, K) with 0 ≤ I < K."""
    match = _SHARD.fullmatch(text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise TiveError(f"--shard {text!r}: give I/K with 0 <= I < K, e.g. --shard 0/4 ... --shard 3/4")
    return int(match.group(1)), int(match.group(2))


def _number(env: Mapping[str, str], name: str) -> int | None:
    """The integer value of environment variable `name`, None when unset or empty."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise TiveError(f"environment variable {name}={value!r} is not a number") from None


def detect_launch(shard: str | None = None, env: Mapping[str, str] | None = None) -> Launch:
    """This process's launch, from `--shard` or the launcher's environment variables (see the module docstring).

    torchrun's variables are a SLURM step's only where `slurm_torch_env` exported them (it marks them with
    TIVE_LAUNCH=slurm), so the launch stays "slurm" once the warm-up has done that, and torchrun run inside an
    allocation is "torchrun" on every rank.
    """
    env = os.environ if env is None else env

    def number(name: str) -> int | None:
        return _number(env, name)

    in_step = bool((env.get("SLURM_STEP_ID") or "").strip())
    step_tasks = number("SLURM_STEP_NUM_TASKS") if in_step and number("SLURM_STEP_NUM_TASKS") else (
        number("SLURM_NTASKS"))
    launched = None
    world = number("WORLD_SIZE")
    if world is not None and number("RANK") is not None:
        rank = number("RANK")
        slurm = (env.get(EXPORTED_MARK) == "slurm" and in_step and rank == number("SLURM_PROCID")
                 and world == step_tasks)
        launched = Launch(rank, world, number("LOCAL_RANK") or 0, "slurm" if slurm else "torchrun")
    elif in_step and (step_tasks or 1) > 1 and number("SLURM_PROCID") is not None:
        launched = Launch(number("SLURM_PROCID"), step_tasks, number("SLURM_LOCALID") or 0, "slurm")
    elif number("SLURM_ARRAY_TASK_ID") is not None and (number("SLURM_ARRAY_TASK_COUNT") or 1) > 1:
        index = number("SLURM_ARRAY_TASK_ID") - (number("SLURM_ARRAY_TASK_MIN") or 0)
        launched = Launch(index, number("SLURM_ARRAY_TASK_COUNT"), 0, "slurm-array")
    if shard is not None:
        if launched is not None and launched.world > 1:
            raise TiveError(
                f"--shard {shard}: this process is already {launched.describe()}; give --shard only to processes "
                "started by hand"
            )
        rank, world = parse_shard(shard)
        return Launch(rank, world, 0, "shard")
    if launched is None or launched.world <= 1:
        allocated = number("SLURM_NTASKS") or 1
        if not in_step and allocated > 1 and (launched is None or launched.kind != "slurm-array"):
            return Launch(note=f"a SLURM allocation of {allocated} tasks without srun: this one process does all "
                               "the work; start the tasks with `srun python -m tive ...` to share it")
        return Launch()
    if not 0 <= launched.rank < launched.world:
        raise TiveError(f"{launched.kind}: rank {launched.rank} is outside 0..{launched.world - 1}")
    return launched


# Set beside the torch.distributed variables `slurm_torch_env` exports: they are a SLURM step's, not torchrun's.
EXPORTED_MARK = "TIVE_LAUNCH"

# The port rank 0 listens on when neither MASTER_PORT nor SLURM_JOB_ID says (torch's own default), and the range a
# job id is mapped into (below Linux's ephemeral ports, 32768 and up, so no outgoing connection holds it).
DEFAULT_MASTER_PORT = 29500
_JOB_PORT_BASE, _JOB_PORT_SPAN = 15000, 10000


def slurm_torch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of a task of one SLURM step (`srun -n K`), from SLURM's own.

    RANK, WORLD_SIZE and LOCAL_RANK are SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID; LOCAL_WORLD_SIZE is given
    where the tasks on this node are known (one node: every task; else SLURM_TASKS_PER_NODE at SLURM_NODEID).
    MASTER_ADDR and MASTER_PORT are the environment's where set. Otherwise the port is derived from SLURM_JOB_ID
    (the same in every task of a job, different between jobs) and, on one node (SLURM_NNODES = 1), the address is
    127.0.0.1; on several nodes rank 0's host cannot be known from here, so a missing MASTER_ADDR is refused with
    how to set it.
    """
    procid = _number(env, "SLURM_PROCID")
    ntasks = _number(env, "SLURM_STEP_NUM_TASKS") or _number(env, "SLURM_NTASKS")
    if procid is None or ntasks is None:
        raise TiveError("SLURM_PROCID and SLURM_NTASKS are not set: this process is not a task of an srun step")
    nodes = _number(env, "SLURM_NNODES") or _number(env, "SLURM_JOB_NUM_NODES")
    out = {"RANK": str(procid), "WORLD_SIZE": str(ntasks), "LOCAL_RANK": str(_number(env, "SLURM_LOCALID") or 0),
           EXPORTED_MARK: "slurm"}
    local_world = ntasks if nodes == 1 else _tasks_on_node(env.get("SLURM_TASKS_PER_NODE", ""),
                                                           _number(env, "SLURM_NODEID"))
    if local_world is not None:
        out["LOCAL_WORLD_SIZE"] = str(local_world)
    address = (env.get("MASTER_ADDR") or "").strip()
    if not address:
        if nodes != 1:
            raise TiveError(
                f"srun over {nodes or 'several'} nodes: MASTER_ADDR (the host of rank 0) is not set; set it in the "
                "job script before srun: export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)"
            )
        address = "127.0.0.1"
    out["MASTER_ADDR"] = address
    port = (env.get("MASTER_PORT") or "").strip()
    if not port:
        job = _number(env, "SLURM_JOB_ID")
        port = str(DEFAULT_MASTER_PORT if job is None else _JOB_PORT_BASE + job % _JOB_PORT_SPAN)
    out["MASTER_PORT"] = port
    return out


_NODE_TASKS = re.compile(r"\s*(\d+)(?:\(x(\d+)\))?\s*")


def _tasks_on_node(tasks_per_node: str, node: int | None) -> int | None:
    """Tasks on node `node` from SLURM_TASKS_PER_NODE ("2(x3),1": 2 on each of the first 3 nodes, 1 on the 4th);
    None when it cannot be told."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = _NODE_TASKS.fullmatch(part)
        if not match:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node] if node is not None and 0 <= node < len(counts) else None
