"""Who this process is among the processes working on one run: its rank and how many there are.

One code path serves one process, N ranks and N independent jobs. The rank and world size come from the launcher:

- `torchrun` (and anything that sets the same variables): RANK, WORLD_SIZE, LOCAL_RANK;
- SLURM tasks of one step (`srun -n K`): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID;
- SLURM array jobs (`sbatch --array=0-K-1`): SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT;
- `--shard I/K` for processes started by hand (several machines, a queue without SLURM).

Ranks of one launch run at the same time (torchrun, one srun step), so rank 0 can wait for the others' work and
finish the stage; shards (array jobs, `--shard`) run whenever they are scheduled, so none waits: the last one to
finish, or `tive score`, completes the store. No collective operation is needed for feature extraction; the ranks
meet only through files in the run directory, which must be on a filesystem they share.

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
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    kind: str = "single"

    @property
    def concurrent(self) -> bool:
        """Whether every rank runs at the same time (so rank 0 may wait for the others)."""
        return self.kind in ("torchrun", "slurm") and self.world > 1

    def owns(self, chunk: int) -> bool:
        """Whether this process computes `chunk` (chunks go to ranks round-robin: chunk c to rank c mod world)."""
        return chunk % self.world == self.rank

    def describe(self) -> str:
        if self.world == 1:
            return "one process"
        return f"{'shard' if self.kind in ('shard', 'slurm-array') else 'rank'} {self.rank} of {self.world} ({self.kind})"


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/K"` → (I, K) with 0 ≤ I < K."""
    match = _SHARD.fullmatch(text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise TiveError(f"--shard {text!r}: give I/K with 0 <= I < K, e.g. --shard 0/4 ... --shard 3/4")
    return int(match.group(1)), int(match.group(2))


def detect_launch(shard: str | None = None, env: Mapping[str, str] | None = None) -> Launch:
    """This process's launch, from `--shard` or the launcher's environment variables (see the module docstring)."""
    env = os.environ if env is None else env

    def number(name: str) -> int | None:
        value = env.get(name)
        if value is None or not value.strip():
            return None
        try:
            return int(value)
        except ValueError:
            raise TiveError(f"environment variable {name}={value!r} is not a number") from None

    launched = None
    world = number("WORLD_SIZE")
    if world is not None and number("RANK") is not None:
        launched = Launch(number("RANK"), world, number("LOCAL_RANK") or 0, "torchrun")
    elif (number("SLURM_NTASKS") or 1) > 1 and number("SLURM_PROCID") is not None:
        launched = Launch(number("SLURM_PROCID"), number("SLURM_NTASKS"), number("SLURM_LOCALID") or 0, "slurm")
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
        return Launch()
    if not 0 <= launched.rank < launched.world:
        raise TiveError(f"{launched.kind}: rank {launched.rank} is outside 0..{launched.world - 1}")
    return launched
