"""Cheaper gradient features against the full ones: wall time and agreement of each cheaper setting, on one run.

    python benchmarks/selection_cost.py --out DIR                      # 600 demo records, --model small, proxy tiny
    python benchmarks/selection_cost.py --out DIR --bench-base         # the bench's pre-trained base on its world
    python benchmarks/selection_cost.py --price --layers last:1,last:4  # FLOPs of 7B-scale shapes, from configs

Settings: every LoRA matrix (`--layers all`, the reference), `--layers last:K` for the K given, and a proxy
reference (a smaller model with its own warm-up on the same records). Each setting's features stage runs
`--repeats` times (interleaved, so a busy machine slows them alike); its wall time is the median. Agreement with the
all-layer features, at the default selection (budget 15%, `sample`, temperature 0.1, select seed 0):

- Spearman of instance values within each task (the smallest and the mean over tasks);
- the largest change of a task's share of the subset (percentage points);
- the overlap of the chosen records (share of the subset chosen by both) with `--choose top` (it depends on the
  values alone), beside what two random choices with the same task budgets share by chance. The default `sample`
  is reported too, with the same seed, but its random numbers are shared, so similar values pick alike: two
  selections from the *same* features with select seeds 0 and 1 show how much sampling alone moves.

On the `small` preset the weights are random, so agreement there says little about real models: the bench's
pre-trained base (`--bench-base`) is where it means something (a 2-layer model: last:1 is its only cheaper K, and
no smaller pre-trained model exists for a proxy). Results are printed and written to DIR/selection_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def read_features(run: Path) -> dict[str, Any]:
    """The run's complete features with the manifest index and task of each row."""
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    meta = json.loads((run / "features" / "meta.json").read_text())
    return {"index": np.array([row["index"] for row in ok]), "tasks": [row["task"] for row in ok],
            "norms": np.load(run / "features" / "norms.npy"),
            "features": np.load(run / "features" / "features.npy").astype(np.float32),
            "grad_dim": meta["grad_dim"], "compute_seconds": sum(c.get("seconds", 0) for c in meta["chunks"])}


def _select(tasks: list[str], norms: np.ndarray, features: np.ndarray, budget: float, seed: int,
            method: str = "sample") -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    from tive.scoring import instance_values, task_values
    from tive.select import budget_count, select_records

    values = instance_values(features, tasks)
    counts, budgets = select_records(tasks, values, task_values(tasks, norms), budget_count(budget, len(tasks)),
                                     seed=seed, method=method)
    return counts, budgets, values


def agreement(full: dict[str, Any], other: dict[str, Any], budget: float = 0.15) -> dict[str, Any]:
    """How far `other`'s scores and selection are from `full`'s, on the records both have features for."""
    common = np.intersect1d(full["index"], other["index"])
    pick_f = np.searchsorted(full["index"], common)
    pick_o = np.searchsorted(other["index"], common)
    tasks = [full["tasks"][i] for i in pick_f]
    chosen_f, budgets_f, values_f = _select(tasks, full["norms"][pick_f], full["features"][pick_f], budget, 0)
    chosen_o, budgets_o, values_o = _select(tasks, other["norms"][pick_o], other["features"][pick_o], budget, 0)
    reseeded, _, _ = _select(tasks, full["norms"][pick_f], full["features"][pick_f], budget, 1)
    top_f, _, _ = _select(tasks, full["norms"][pick_f], full["features"][pick_f], budget, 0, "top")
    top_o, _, _ = _select(tasks, other["norms"][pick_o], other["features"][pick_o], budget, 0, "top")
    total = int(chosen_f.sum())
    sizes = {task: tasks.count(task) for task in budgets_f}
    chance = sum(budgets_f[t] * budgets_o.get(t, 0) / sizes[t] for t in budgets_f) / total
    per_task = {}
    for task in sorted(set(tasks)):
        members = np.array([i for i, t in enumerate(tasks) if t == task])
        per_task[task] = spearman(values_f[members], values_o[members])
    finite = [v for v in per_task.values() if v == v]
    return {
        "records": len(common),
        "spearman_within_task_min": min(finite) if finite else None,
        "spearman_within_task_mean": float(np.mean(finite)) if finite else None,
        "spearman_per_task": per_task,
        "largest_task_share_change_points": 100 * max(abs(budgets_f[t] - budgets_o.get(t, 0)) for t in budgets_f)
        / total,
        # `top` (the highest values of each task's budget): depends on the values alone.
        "overlap_of_chosen_top": float(np.minimum(top_f, top_o).sum() / total),
        # what two random choices with these task budgets share on average
        "overlap_by_chance": float(chance),
        # the default `sample` with the same seed: its random numbers are shared, so similar values pick alike
        "overlap_of_chosen_sample_same_seed": float(np.minimum(chosen_f, chosen_o).sum() / total),
        "overlap_same_features_other_seed": float(np.minimum(chosen_f, reseeded).sum() / total),
    }


def make_inputs(out: Path, args: argparse.Namespace) -> tuple[Path, str, str, str]:
    """(data file, image folder, task field, reference model) for the benchmark's run."""
    if args.bench_base:
        from tive.bench.model import BaseSettings, build_base
        from tive.bench.runner import _load_records, alignment_sources, world_inputs
        from tive.bench.world import WorldSizes

        inputs = world_inputs(out / "bench", args.world_seed, WorldSizes())
        records = [r for r in _load_records(inputs.train, inputs.images, inputs.task_field) if r.ok]
        align, vision, source, _ = alignment_sources(inputs, records)
        started = time.perf_counter()
        build_base(out / "bench" / "base", records, align, BaseSettings(seed=args.world_seed), vision=vision,
                   vision_source=source)
        print(f"bench base model: {time.perf_counter() - started:.0f} s")
        return inputs.train, str(inputs.images), inputs.task_field, str(out / "bench" / "base")
    from tive.demo_data import make_demo_dataset

    data = make_demo_dataset(out / "data", n_records=args.records, seed=0)
    return data, str(data.parent / "images"), "dataset", args.model


SHAPES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "model_shapes"


def price(target: str, references: list[str], layers: list[str], text_tokens: list[float], images: float,
          records: int) -> None:
    """The FLOP accounting of `tive estimate` for shapes given by config alone (tests/fixtures/model_shapes):
    each reference and --layers setting against one epoch of the target, at the authors' warm-up (8%, 1 epoch,
    LoRA rank 128 on q,k,v,o)."""
    from tive.cost import Tokens, epoch_flops, model_shape, selection_flops
    from tive.model.loading import parse_layers

    target_shape = model_shape(SHAPES / target)
    print(f"target {target} ({target_shape.total_params / 1e9:.2f}B), {records:,} records, {images} images a record; "
          "selection as % of one epoch with gradient checkpointing (finetune.sh) / without")
    print("| reference | layers | " + " | ".join(f"{t:.0f} text tokens" for t in text_tokens) + " |")
    print("|---|---|" + "---|" * len(text_tokens))
    for reference in references:
        shape = model_shape(SHAPES / reference)
        for setting in layers:
            cells = []
            for text in text_tokens:
                tokens = Tokens(records, 0, text, images, float(shape.image_tokens or 576))
                selection = selection_flops(shape, tokens, warmup_records=0.08 * records, epochs=1, lora_rank=128,
                                            lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            last_layers=parse_layers(setting))["flops"]
                cells.append(f"{100 * selection / epoch_flops(target_shape, tokens)['flops']:.1f}% / "
                             f"{100 * selection / epoch_flops(target_shape, tokens, False)['flops']:.1f}%")
            print(f"| {reference} ({shape.total_params / 1e9:.2f}B) | {setting} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--price", action="store_true",
                        help="only the FLOP table of tests/fixtures/model_shapes against --target (no run)")
    parser.add_argument("--target", default="llava-1.5-7b")
    parser.add_argument("--references", default="llava-1.5-7b,llava-phi-2,llava-tinyllama-1.1b")
    parser.add_argument("--text-tokens", default="100,300,1000")
    parser.add_argument("--images-per-record", type=float, default=0.94)
    parser.add_argument("--price-records", type=int, default=665_298)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--records", type=int, default=600, help="demo records (default 600)")
    parser.add_argument("--model", default="small", help="reference model (default: the small preset)")
    parser.add_argument("--proxy", default="tiny", help="the proxy reference (default tiny; 'none' to skip)")
    parser.add_argument("--layers", default="last:1,last:2", help="cheaper settings, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bench-base", action="store_true", help="the bench's pre-trained base on its world's data")
    parser.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    if args.price:
        price(args.target, args.references.split(","), ["all", *args.layers.split(",")],
              [float(t) for t in args.text_tokens.split(",")], args.images_per_record, args.price_records)
        return
    if args.out is None:
        parser.error("--out is required (or --price)")

    import torch

    from tive.config import FeaturesOptions, PrepareOptions, WarmupOptions
    from tive.stages import run_features, run_prepare, run_warmup

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    data, images, task_field, model = make_inputs(args.out, args)
    runs = {"reference": args.out / "run"}
    models = {"reference": model}
    if args.proxy != "none" and not args.bench_base:
        runs["proxy"], models["proxy"] = args.out / "run_proxy", args.proxy
    warmup_seconds = {}
    for name, run in runs.items():
        run_prepare(data, run, PrepareOptions(images=images, task_field=task_field))
        started = time.perf_counter()
        warm = WarmupOptions(model=models[name], device="cpu")
        if args.bench_base:  # the bench's own warm-up settings for its tiny pre-trained base (SelectionSettings)
            from tive.bench.runner import SelectionSettings

            bench = SelectionSettings()
            warm = replace(warm, warmup_fraction=bench.warmup_fraction, lora_rank=bench.lora_rank,
                           lora_targets=bench.lora_targets, learning_rate=bench.learning_rate, epochs=bench.epochs,
                           seed=bench.seed)
        run_warmup(run, warm)
        warmup_seconds[name] = time.perf_counter() - started
    base = FeaturesOptions(device="cpu", grad_batch_size=8, force=True, progress_interval=3600)
    settings = {"all": ("reference", base)}
    for layers in filter(None, args.layers.split(",")):
        settings[layers] = ("reference", replace(base, layers=layers))
    if "proxy" in runs:
        settings[f"proxy {args.proxy}"] = ("proxy", base)
    times: dict[str, list[float]] = {name: [] for name in settings}
    computed: dict[str, list[float]] = {name: [] for name in settings}
    arrays: dict[str, dict[str, Any]] = {}
    for repeat in range(args.repeats):
        for name, (which, options) in settings.items():
            started = time.perf_counter()
            run_features(runs[which], options)
            times[name].append(time.perf_counter() - started)
            arrays[name] = read_features(runs[which])
            np.savez(args.out / f"features_{name.replace(' ', '_').replace(':', '')}.npz",
                     **{k: np.asarray(v) for k, v in arrays[name].items()})
            computed[name].append(arrays[name]["compute_seconds"])
    full_time = statistics.median(times["all"])
    results = {}
    for name in settings:
        results[name] = {
            "wall_seconds": times[name], "median_wall_seconds": statistics.median(times[name]),
            "ratio_to_all": statistics.median(times[name]) / full_time,
            "median_compute_seconds": statistics.median(computed[name]),
            "grad_dim": arrays[name]["grad_dim"],
            **({} if name == "all" else agreement(arrays["all"], arrays[name])),
        }
    summary = {"model": model, "records": len(arrays["all"]["index"]), "repeats": args.repeats,
               "warmup_seconds": warmup_seconds, "settings": results,
               "machine": f"{torch.get_num_threads()} torch threads", "bench_base": args.bench_base}
    (args.out / "selection_cost.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['records']} records, reference {model}; warm-up "
          + ", ".join(f"{k} {v:.1f} s" for k, v in warmup_seconds.items()))
    print("| setting | LoRA numbers | features wall (median of "
          f"{args.repeats}) | x all | Spearman within tasks (min / mean) | largest task-share change | "
          "overlap of chosen, top (by chance) | overlap, sample, same seed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        agree = ("" if name == "all" else
                 f"{r['spearman_within_task_min']:.3f} / {r['spearman_within_task_mean']:.3f} | "
                 f"{r['largest_task_share_change_points']:.1f} pts | {100 * r['overlap_of_chosen_top']:.0f}% "
                 f"({100 * r['overlap_by_chance']:.0f}%) | {100 * r['overlap_of_chosen_sample_same_seed']:.0f}%")
        print(f"| {name} | {r['grad_dim']:,} | {r['median_wall_seconds']:.1f} s | {r['ratio_to_all']:.2f} | "
              + (agree or "(reference) | | | ") + " |")
    print(f"(two default selections from the same all-layer features with select seeds 0 and 1 share "
          f"{100 * next(iter(r for n, r in results.items() if n != 'all'))['overlap_same_features_other_seed']:.0f}%)")


if __name__ == "__main__":
    main()
