"""`tive bench`: its subcommand (`add_parser`), the settings it resolves from the flags (`resolve`) and the function
tive's CLI calls with the parsed arguments (`run`).

Every flag comes from a field of one of the bench's dataclasses (`RunFlags`, `OwnData` here; `WorldSizes`,
`Plan`, `Recipe`, `BaseSettings`, `SelectionSettings` where they are used), built by `tive.bench.options`, so each
default is declared once, next to the code that uses it. Precedence: the dataclass default, then `--quick`'s
value (`runner.QUICK`), then the flag as given. Values out of bounds are refused with a TiveError naming the flag.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tive.bench.options import add_fields, check_fields, flag_of, flagged_fields, given
from tive.config import opt
from tive.errors import TiveError

HELP = "the miniature of the paper's experiment: TIVE vs baselines, each subset fine-tuned and benchmarked"


@dataclass
class RunFlags:
    """Where the bench writes and which built-in world it builds."""

    out: str | None = opt(None, "output folder (created; a rerun resumes finished work and recomputes what changed)",
                          required=True)
    world_seed: int = opt(0, "seed of the built-in world and of the base model's initialisation", min=0)
    world: tuple[str, ...] = opt(("clean", "mixed"), "the built-in worlds to run, comma-separated: clean (no "
                                 "defects), mixed (every defect at once), or one defect alone: wrong, offformat, "
                                 "duplicates, size, trap", parse=lambda text: tuple(
                                     p.strip() for p in text.split(",") if p.strip()))
    quick: bool = opt(False, "a small smoke test (3-8 min on 2 cores shared with other jobs): small "
                      "worlds, a 300-step prior, one seed, 80 steps; flags given as well still apply", action="store_true")

    def __post_init__(self) -> None:
        from tive.bench.world import WORLD_KINDS

        check_fields(self)
        unknown = [kind for kind in self.world if kind not in WORLD_KINDS]
        if unknown or not self.world:
            raise TiveError(f"--world {','.join(self.world)}: choose from {', '.join(WORLD_KINDS)} (comma-separated)")
        if len(set(self.world)) != len(self.world):
            raise TiveError(f"--world {','.join(self.world)}: a world is named twice")


@dataclass
class OwnData:
    """Your own data instead of the built-in world."""

    train: str | None = opt(None, "LLaVA-format JSON/JSONL training mixture")
    images: str | None = opt(None, "root folder of the images of the training, alignment and benchmark records")
    task_field: str | None = opt(None, "record field naming each training record's task, e.g. dataset")
    eval: list[str] = opt([], "benchmark files: LLaVA-format JSON of held-out records, last answer = reference, "
                          "optional `metric` field exact|option|iou|cloze (cloze: an `options` list of strings); each is named after its file (`--eval a.json "
                          "b.json`, or --eval repeated)", nargs="+", action="extend", metavar="EVAL")
    align: str | None = opt(None, "alignment records (e.g. captions) the tiny base model is pre-trained on, as "
                            "LLaVA's alignment stage; without it, the base model's vision tower is pre-trained on "
                            "the training records' images (the bag of words of their answers)")


@dataclass
class BenchConfig:
    """Everything a bench run is made of, resolved from the flags (nothing is written yet)."""

    out: Path
    world_seed: int
    worlds: tuple[str, ...]
    sizes: Any  # WorldSizes of the built-in world, or None with your own data
    inputs: Any  # runner.Inputs with your own data, or None for the built-in world
    plan: Any
    base: Any
    selection: Any


def _classes() -> list[tuple[type, str]]:
    from tive.bench.model import BaseSettings, Recipe
    from tive.bench.runner import Plan, SelectionSettings
    from tive.bench.world import WorldSizes

    return [
        (RunFlags, ""),
        (OwnData, "your own data (instead of the built-in world)"),
        (WorldSizes, "the built-in world"),
        (Plan, "plan"),
        (Recipe, "fine-tuning recipes (equal steps, equal epochs)"),
        (BaseSettings, "base model pre-training"),
        (SelectionSettings, "TIVE settings (default: the project's, except the warm-up for the tiny base)"),
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to tive's subparsers."""
    from tive.bench.runner import QUICK

    bench = subparsers.add_parser(
        "bench",
        help=HELP,
        description=(
            "Fine-tune a tiny pre-trained LLaVA on subsets chosen by TIVE and by baselines (random, stratified "
            "random, TIVE's task level only, its instance level only, gradient norm, EL2N, length) at equal "
            "budgets, evaluate each on held-out benchmarks, and print a table like the paper's, with each "
            "benchmark's chance level. Without --train it builds its own world (a miniature of LLaVA-1.5's "
            "mix) from --world-seed."
        ),
    )
    for cls, title in _classes():
        group = bench.add_argument_group(title) if title else bench
        add_fields(group, cls, QUICK.get(cls))
    return bench


def _given_any(cls: type, args: argparse.Namespace) -> list[str]:
    names = given(cls, args)
    return [flag_of(cls, name) for name in names]


def resolve(args: argparse.Namespace) -> BenchConfig:
    """The bench's settings from parsed arguments: defaults, then --quick, then the flags given; checked."""
    from tive.bench.model import BaseSettings, Recipe
    from tive.bench.runner import QUICK, Inputs, Plan, SelectionSettings
    from tive.bench.world import WorldSizes

    run = RunFlags(**given(RunFlags, args))
    own = OwnData(**given(OwnData, args))

    def settings(cls: type, **fixed: Any) -> Any:
        return cls(**{**(QUICK.get(cls, {}) if run.quick else {}), **given(cls, args), **fixed})

    recipe = settings(Recipe)
    plan = settings(Plan, recipe=recipe)
    if plan.ablation_budget not in plan.budgets:
        if "ablation_budget" in given(Plan, args):
            raise TiveError(f"{flag_of(Plan, 'ablation_budget')} {plan.ablation_budget:g}: not one of the budgets "
                            f"({', '.join(f'{b:g}' for b in plan.budgets)}); the other methods are compared with "
                            "tive and random at the same budget")
        plan = replace(plan, ablation_budget=min(plan.budgets, key=lambda b: abs(b - plan.ablation_budget)))
    base = settings(BaseSettings, seed=run.world_seed)
    selection = settings(SelectionSettings)

    if own.train is None:
        if any(getattr(own, f.name) for f in flagged_fields(OwnData)):
            raise TiveError("--images, --task-field, --eval and --align go with --train (your own data); "
                            "pass --train DATA too")
        return BenchConfig(Path(run.out), run.world_seed, run.world, settings(WorldSizes), None, plan, base,
                           selection)
    world_flags = _given_any(WorldSizes, args) + (["--world"] if "world" in given(RunFlags, args) else [])
    if world_flags:
        raise TiveError(f"{', '.join(world_flags)}: choose or size the built-in world; they do not go with --train")
    if not own.eval:
        raise TiveError("--train needs at least one --eval FILE (a benchmark of held-out records)")
    inputs = Inputs(Path(own.train), Path(own.images) if own.images else None, own.task_field,
                    [Path(p) for p in own.eval], Path(own.align) if own.align else None)
    return BenchConfig(Path(run.out), run.world_seed, (), None, inputs, plan, base, selection)


def run(args: argparse.Namespace) -> dict:
    """Run the bench from parsed arguments (tive's CLI turns a TiveError into a message and exit status 2)."""
    from tive.bench.runner import run_bench, run_worlds

    config = resolve(args)
    if config.inputs is not None:
        return run_bench(config.out, config.inputs, config.plan, config.base, config.selection)
    return run_worlds(config.out, config.world_seed, config.worlds, config.sizes, config.plan, config.base,
                      config.selection)
