"""Command line: parse arguments, call the stage functions, print errors without tracebacks.

Table-driven: every subcommand is declared once in `COMMANDS` (its name, help, positional arguments, the option
dataclasses its flags come from and its handler); `build_parser` registers each handler on its subparser with
`set_defaults(func=...)` and `main` calls it. A new subcommand or flag needs no change to `main`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tive import __version__
from tive.config import (
    EstimateOptions,
    FeaturesOptions,
    PrepareOptions,
    SelectOptions,
    WarmupOptions,
    add_options,
    options_from_args,
)
from tive.errors import TiveError

STAGES = (PrepareOptions, WarmupOptions, FeaturesOptions, SelectOptions)

_DATA_HELP = "the dataset: JSON / JSONL file, Parquet file or `datasets` save_to_disk directory"
_CONFIG = (("--config",), {"metavar": "FILE", "help": "a YAML file of options, one section per stage (prepare, warmup, "
                           "features, select; RUN/config.yaml is one): the command line wins"})
_RUN_DIR_HELP = "run directory made by `tive prepare`"


def _prepare(args: argparse.Namespace) -> Any:
    from tive.stages import run_prepare

    return run_prepare(args.data, args.out, options_from_args(PrepareOptions, args))


def _warmup(args: argparse.Namespace) -> Any:
    from tive.stages import run_warmup

    return run_warmup(args.run_dir, options_from_args(WarmupOptions, args))


def _features(args: argparse.Namespace) -> Any:
    from tive.stages import run_features

    return run_features(args.run_dir, options_from_args(FeaturesOptions, args))


def _score(args: argparse.Namespace) -> Any:
    from tive.stages import run_score

    return run_score(args.run_dir)


def _select(args: argparse.Namespace) -> Any:
    from tive.stages import run_select

    return run_select(args.run_dir, options_from_args(SelectOptions, args))


def _report(args: argparse.Namespace) -> Any:
    from tive.stages.select import run_report

    return run_report(args.run_dir)


def _run(args: argparse.Namespace) -> Any:
    from tive.stages import run_all

    data = args.data or (args.config_file or {}).get("data")
    if not data:
        raise TiveError("tive run: give the dataset (DATA), or a --config file with `data:`")
    return run_all(data, args.out, *(options_from_args(cls, args) for cls in STAGES))


def _estimate(args: argparse.Namespace) -> Any:
    from tive.stages.estimate import run_estimate

    return run_estimate(args.run_dir, options_from_args(WarmupOptions, args), options_from_args(FeaturesOptions, args),
                        options_from_args(EstimateOptions, args))


def _demo(args: argparse.Namespace) -> Any:
    from tive.demo import run_demo

    return run_demo(Path(args.out), records=args.records, budget=args.budget, seed=args.seed)


def _baseline(args: argparse.Namespace) -> Any:
    from tive.baseline import run_baseline

    return run_baseline(args.run_dir, args.method, args.seed)


def _export(args: argparse.Namespace) -> Any:
    from tive.export import run_export

    return run_export(args.run_dir, args.target, model=args.model, template=args.template,
                      finetuning_type=args.finetuning_type, out=args.out)


def _compare(args: argparse.Namespace) -> Any:
    from tive.compare import run_compare

    return run_compare(args.results, labels=args.label, full=args.full, out=args.out)


def _bench(args: argparse.Namespace) -> Any:
    from tive.bench.cli import run

    return run(args)


@dataclass(frozen=True)
class Command:
    """One subcommand: its flags come from `options` (dataclasses) and `arguments` (extra argparse calls)."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], Any]
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    options: tuple[type, ...] = ()
    build: Callable[[Any], argparse.ArgumentParser] | None = field(default=None)


def _positional(name: str, help: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    return (name,), {"help": help}


_OUT_NEW = (("--out",), {"required": True, "help": "run directory (created)"})


def _bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tive.bench.cli import add_parser

    return add_parser(subparsers)


COMMANDS: tuple[Command, ...] = (
    Command("run", "run every stage: prepare, warmup, features, score, select", _run,
            ((("data",), {"nargs": "?", "help": _DATA_HELP + " (or `data:` of --config)"}), _OUT_NEW, _CONFIG),
            STAGES),
    Command("demo", "build the offline demo dataset and run the whole pipeline on it", _demo, (
        (("--out",), {"default": "tive-demo", "help": "folder for the demo data and run (default: tive-demo)"}),
        (("--records",), {"type": int, "default": 1200, "help": "demo dataset size (default: 1200)"}),
        (("--budget",), {"default": "0.15", "help": "subset size (default: 0.15)"}),
        (("--seed",), {"type": int, "default": 0, "help": "seed of the data, model and selection (default: 0)"}),
    )),
    Command("bench", "", _bench, build=_bench_parser),
    Command("prepare", "read, validate and group the input into tasks", _prepare,
            (_positional("data", _DATA_HELP), _OUT_NEW, _CONFIG), (PrepareOptions,)),
    Command("warmup", "LoRA warm-up of the base model: the reference model", _warmup,
            (_positional("run_dir", _RUN_DIR_HELP), _CONFIG), (WarmupOptions,)),
    Command("features", "per-record projected LoRA gradients and their norms", _features,
            (_positional("run_dir", _RUN_DIR_HELP), _CONFIG), (FeaturesOptions,)),
    Command("score", "task values and instance values", _score, (_positional("run_dir", _RUN_DIR_HELP),)),
    Command("select", "budgeted selection; writes the subset, manifest and tasks.json", _select,
            (_positional("run_dir", _RUN_DIR_HELP), _CONFIG), (SelectOptions,)),
    Command("report", "(re)write RUN/report.html: what was selected and why", _report,
            (_positional("run_dir", _RUN_DIR_HELP),)),
    Command("estimate", "time a few warm-up steps and feature batches; project the run's time, disk and memory",
            _estimate, (_positional("run_dir", _RUN_DIR_HELP), _CONFIG),
            (EstimateOptions, WarmupOptions, FeaturesOptions)),
    Command("baseline", "a random or task-stratified subset of the selection's size, to train beside it", _baseline, (
        _positional("run_dir", "run directory with a selection (`tive select` / `tive run`)"),
        (("--method",), {"required": True, "choices": ["random", "stratified"],
                         "help": "random: uniform over the eligible records; stratified: the input's task shares"}),
        (("--seed",), {"type": int, "default": 0, "help": "seed of the draw; in the file name when not 0 "
                                                          "(default: 0)"}),
    )),
    Command("export", "files for the trainers (LLaMA-Factory, LLaVA) and the lmms-eval command, for the subset and "
            "each baseline", _export, (
        _positional("run_dir", "run directory with a selection (`tive select` / `tive run`)"),
        (("--for",), {"dest": "target", "required": True, "choices": ["llama-factory", "llava"],
                      "help": "llama-factory: dataset_info.json + a training YAML per dataset; llava: the "
                              "arguments of LLaVA's finetune*.sh (LLaVA-format JSON only)"}),
        (("--model",), {"help": "the model to train (default: the run's --target-model, else its --model)"}),
        (("--template",), {"help": "LLaMA-Factory's chat template (default: from the model's model_type)"}),
        (("--finetuning-type",), {"dest": "finetuning_type", "choices": ["full", "lora"], "default": "full",
                                  "help": "LLaMA-Factory: full (LLaVA-1.5's finetune.sh) or lora (default: full)"}),
        (("--out",), {"help": "folder for the files (default: RUN/export)"}),
    )),
    Command("compare", "the paper's results table for your model, from lmms-eval's result files", _compare, (
        (("results",), {"nargs": "+", "help": "lmms-eval *_results.json files, or their --output_path folders "
                                              "(the newest below each)"}),
        (("--label",), {"action": "append", "help": "a label per result, in order (default: the file or folder "
                                                    "name); repeat it"}),
        (("--full",), {"help": "the label of the model trained on all the data (default: `full`, else the first)"}),
        (("--out",), {"default": "comparison.md", "help": "the table as Markdown; JSON beside it "
                                                           "(default: comparison.md)"}),
    )),
)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser()[0]


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, Command]]]:
    """The parser, and each subcommand's parser with its declaration."""
    parser = argparse.ArgumentParser(
        prog="tive",
        description="Select the high-value part of a visual instruction tuning dataset (TIVE, arXiv 2403.09559).",
    )
    parser.add_argument("--version", action="version", version=f"tive {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for command in COMMANDS:
        if command.build is not None:
            stage = command.build(sub)
        else:
            stage = sub.add_parser(command.name, help=command.help)
            for flags, kwargs in command.arguments:
                stage.add_argument(*flags, **kwargs)
            for cls in command.options:
                add_options(stage, cls)
        stage.set_defaults(func=command.handler, config_file=None, config_sections={}, given_flags=None)
        commands[command.name] = (stage, command)
    return parser, commands


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; with --config, each stage's section of the file gives that stage's options where
    the command line does not (see `options_from_args`)."""
    from tive.config import SECTIONS, load_config, version_warnings

    parser, commands = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        config = load_config(args.config)
        _, command = commands[args.command]
        args.config_file = config
        args.config_sections = {name: config[name] for name, cls in SECTIONS.items()
                                if cls in command.options and name in config}
        args.given_flags = _given_flags(argv, args.command)
        for note in config.get("notes", []):
            print(f"tive: note: {note}", file=sys.stderr)
        for warning in version_warnings(config):
            print(f"tive: warning: {warning}", file=sys.stderr)
    return args


def _given_flags(argv: list[str] | None, command: str) -> set[str]:
    """The option names (dests) given on the command line: parsed again with every option's default a marker."""
    unset = object()
    parser, commands = _build_parser()
    stage, _ = commands[command]
    appended = {action.dest for action in stage._actions if isinstance(action, argparse._AppendAction)}
    for action in stage._actions:
        if action.option_strings and action.dest not in appended:  # a repeatable option's None says it already
            action.default = unset
    args = parser.parse_args(argv)
    return {name for name, value in vars(args).items()
            if value is not unset and not (name in appended and value is None)}


def _leave_launch(code: int) -> None:
    """A rank of a multi-process launch (torchrun, srun) that ends with an error leaves at once, its output flushed.

    Its peers stop with a message of their own (the warm-up's status exchange, or a failed collective). Leaving
    through the interpreter's normal exit tears down a process group whose peer may already be gone, and that
    aborted the rank (SIGABRT, exit -6) after it had printed its message: seen in CI on both two-rank stop tests of
    `tests/test_warmup_scale.py`, about once in 13 runs. A single process, or a rank without a process group,
    returns normally.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("tive").setLevel(logging.INFO)
    try:
        args = _parse(argv)
        args.func(args)
    except TiveError as exc:
        print(f"tive: error: {exc}", file=sys.stderr)
        _leave_launch(2)
        return 2
    except KeyboardInterrupt:
        print("tive: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
