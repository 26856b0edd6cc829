"""Command line: parse arguments, call the stage functions, print errors without tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tive import __version__
from tive.config import (
    FeaturesOptions,
    PrepareOptions,
    SelectOptions,
    WarmupOptions,
    add_options,
    options_from_args,
)
from tive.errors import TiveError

STAGES = (PrepareOptions, WarmupOptions, FeaturesOptions, SelectOptions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tive",
        description="Select the high-value part of a visual instruction tuning dataset (TIVE, arXiv 2403.09559).",
    )
    parser.add_argument("--version", action="version", version=f"tive {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every stage: prepare, warmup, features, score, select")
    run.add_argument("data", help="LLaVA-format JSON (a list of records) or JSONL file")
    run.add_argument("--out", required=True, help="run directory (created)")
    for cls in STAGES:
        add_options(run, cls)

    demo = sub.add_parser("demo", help="build the offline demo dataset and run the whole pipeline on it")
    demo.add_argument("--out", default="tive-demo", help="folder for the demo data and run (default: tive-demo)")
    demo.add_argument("--records", type=int, default=1200, help="demo dataset size (default: 1200)")
    demo.add_argument("--budget", default="0.15", help="subset size (default: 0.15)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, model and selection (default: 0)")

    from tive.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    prepare = sub.add_parser("prepare", help="read, validate and group the input into tasks")
    prepare.add_argument("data", help="LLaVA-format JSON (a list of records) or JSONL file")
    prepare.add_argument("--out", required=True, help="run directory (created)")
    add_options(prepare, PrepareOptions)

    for name, cls, text in (
        ("warmup", WarmupOptions, "LoRA warm-up of the base model: the reference model"),
        ("features", FeaturesOptions, "per-record projected LoRA gradients and their norms"),
        ("score", None, "task values and instance values"),
        ("select", SelectOptions, "budgeted selection; writes the subset, manifest and tasks.json"),
    ):
        stage = sub.add_parser(name, help=text)
        stage.add_argument("run_dir", help="run directory made by `tive prepare`")
        if cls is not None:
            add_options(stage, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("tive").setLevel(logging.INFO)
    from tive import stages

    try:
        if args.command == "prepare":
            stages.run_prepare(args.data, args.out, options_from_args(PrepareOptions, args))
        elif args.command == "warmup":
            stages.run_warmup(args.run_dir, options_from_args(WarmupOptions, args))
        elif args.command == "features":
            stages.run_features(args.run_dir, options_from_args(FeaturesOptions, args))
        elif args.command == "score":
            stages.run_score(args.run_dir)
        elif args.command == "select":
            stages.run_select(args.run_dir, options_from_args(SelectOptions, args))
        elif args.command == "run":
            stages.run_all(
                args.data,
                args.out,
                *(options_from_args(cls, args) for cls in STAGES),
            )
        elif args.command == "bench":
            from tive.bench.cli import run as run_bench

            run_bench(args)
        elif args.command == "demo":
            from tive.demo import run_demo

            run_demo(Path(args.out), records=args.records, budget=args.budget, seed=args.seed)
    except TiveError as exc:
        print(f"tive: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tive: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
