"""`tive bench`: its subcommand (`add_parser`) and the function tive's CLI calls with the parsed arguments (`run`)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from tive.errors import TiveError

HELP = "the miniature of the paper's experiment: TIVE vs baselines, each subset fine-tuned and benchmarked"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to tive's subparsers."""
    bench = subparsers.add_parser(
        "bench",
        help=HELP,
        description=(
            "Fine-tune a tiny pre-trained LLaVA on subsets chosen by TIVE and by baselines (random, stratified "
            "random, TIVE's task level only, its instance level only, gradient norm, EL2N, length) at equal "
            "budgets, evaluate each on held-out benchmarks, and print a table like the paper's. Without --train "
            "it builds its own world (a miniature of LLaVA-1.5's mix) from --world-seed."
        ),
    )
    bench.add_argument("--out", required=True, help="output folder (created; a rerun resumes finished work)")
    bench.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world (default: 0)")
    bench.add_argument("--quick", action="store_true",
                       help="a small smoke test (~3 minutes on 2 cores): small world, 15%% only, one seed")
    own = bench.add_argument_group("your own data (instead of the built-in world)")
    own.add_argument("--train", help="LLaVA-format JSON/JSONL training mixture")
    own.add_argument("--images", help="root folder of the images of the training, alignment and benchmark records")
    own.add_argument("--task-field", help="record field naming each training record's task, e.g. dataset")
    own.add_argument("--eval", action="append", default=[], metavar="EVAL",
                     help="a benchmark: LLaVA-format JSON of held-out records, last answer = reference, optional "
                          "`metric` field exact|option|iou (repeatable; named after the file)")
    own.add_argument("--align", help="alignment records (e.g. captions) the tiny base model is pre-trained on")
    plan = bench.add_argument_group("plan")
    plan.add_argument("--budgets", default=None,
                      help="comma-separated budgets for tive and random (default: 0.05,0.1,0.15,0.3)")
    plan.add_argument("--seeds", type=int, default=None, help="seeds per subset method (default: 3; quick: 1)")
    plan.add_argument("--steps", type=int, default=None,
                      help="optimiser steps of every fine-tuning run, whatever its subset size (default: 300; quick: 80)")
    plan.add_argument("--epochs", type=int, default=None,
                      help="train every subset for this many epochs instead (the paper's recipe; see the README)")
    plan.add_argument("--workers", type=int, default=None,
                      help="training processes in parallel (default: the number of CPUs, at most 4)")
    plan.add_argument("--records", type=int, default=None,
                      help="training records of the built-in world (default: 4000; quick: 1000)")
    tive = bench.add_argument_group("TIVE settings (default: the project's)")
    tive.add_argument("--choose", choices=["sample", "top"], default="sample", help="instance choice (default: sample)")
    tive.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the project's)")
    tive.add_argument("--proj-dim", type=int, default=8192, help="projection dimension (default: 8192)")
    tive.add_argument("--warmup-fraction", type=float, default=0.08, help="warm-up share (default: 0.08)")
    return bench


def _budgets(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise TiveError(f"--budgets {text!r}: {part!r} is not a number; give fractions such as 0.05,0.15") from None
        if not 0 < value < 1:
            raise TiveError(f"--budgets {text!r}: {value} must be a fraction in (0, 1)")
        values.append(value)
    return tuple(sorted(set(values)))


def run(args: argparse.Namespace) -> dict:
    """Run the bench from parsed arguments (tive's CLI turns a TiveError into a message and exit status 2)."""
    from tive.bench.model import BaseSettings, Recipe
    from tive.bench.runner import (
        DEFAULT_SIZES,
        QUICK_BASE,
        QUICK_SIZES,
        QUICK_STEPS,
        Inputs,
        Plan,
        SelectionSettings,
        run_bench,
        world_inputs,
    )
    from tive.select import DEFAULT_TEMPERATURE

    out = Path(args.out)
    own = [args.train, args.task_field, args.align] + list(args.eval)
    if args.train is None and any(own):
        raise TiveError("--task-field, --eval and --align go with --train (your own data); pass --train DATA too")
    workers = args.workers or max(1, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise TiveError(f"--workers {args.workers}: must be at least 1")
    plan = Plan(workers=workers)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    base = BaseSettings(seed=args.world_seed, **(QUICK_BASE if args.quick else {}))
    if args.quick:
        plan = replace(plan, budgets=(0.15,), seeds=(0,), recipe=Recipe(steps=QUICK_STEPS))
    if args.budgets:
        plan = replace(plan, budgets=_budgets(args.budgets))
    if args.seeds is not None:
        if args.seeds < 1:
            raise TiveError(f"--seeds {args.seeds}: must be at least 1")
        plan = replace(plan, seeds=tuple(range(args.seeds)))
    if args.steps is not None and args.epochs is not None:
        raise TiveError("--steps and --epochs: give one (equal steps for every subset, or equal epochs)")
    for name in ("steps", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TiveError(f"--{name} {value}: must be at least 1")
    if args.steps is not None:
        plan = replace(plan, recipe=replace(plan.recipe, steps=args.steps))
    if args.epochs is not None:
        plan = replace(plan, recipe=replace(plan.recipe, epochs=args.epochs))
    if plan.ablation_budget not in plan.budgets:
        plan = replace(plan, ablation_budget=min(plan.budgets, key=lambda b: abs(b - 0.15)))
    selection = SelectionSettings(
        choose=args.choose,
        temperature=args.temperature if args.temperature is not None else DEFAULT_TEMPERATURE,
        proj_dim=args.proj_dim,
        warmup_fraction=args.warmup_fraction,
    )
    if selection.temperature <= 0:
        raise TiveError(f"--temperature {args.temperature}: must be positive")
    if args.train is None:
        if args.records is not None:
            if args.records < 100:
                raise TiveError(f"--records {args.records}: the world needs at least 100 training records")
            sizes = replace(sizes, train=args.records)
        inputs = world_inputs(out, args.world_seed, sizes)
    else:
        if not args.eval:
            raise TiveError("--train needs at least one --eval FILE (a benchmark of held-out records)")
        inputs = Inputs(Path(args.train), Path(args.images) if args.images else None, args.task_field,
                        [Path(p) for p in args.eval], Path(args.align) if args.align else None)
    return run_bench(out, inputs, plan, base, selection)
