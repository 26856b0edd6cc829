"""The pipeline's stages, one module each. Each reads earlier artefacts from the run directory and commits its own.

A stage never knows how it was launched (a plain process, `torchrun`, a SLURM task, a test): the CLI, the demo and
the tests call these functions alike.
"""

from tive.stages.common import say
from tive.stages.features import run_features
from tive.stages.pipeline import run_all
from tive.stages.prepare import run_prepare
from tive.stages.score import run_score
from tive.stages.select import run_select
from tive.stages.warmup import run_warmup

__all__ = ["say", "run_prepare", "run_warmup", "run_features", "run_score", "run_select", "run_all"]
