"""`tive bench`: the miniature of the paper's experiment, end to end.

    inputs (the built-in world, or the user's train file + images + benchmark files)
      -> base model (tiny LLaVA pre-trained on the alignment set; cached)
      -> selection signals: TIVE's stages once (prepare, warmup, features, score) + EL2N + answer lengths
      -> subsets: every method x budget x seed, exactly the same size at each budget
      -> training runs: a fresh copy of the base fine-tuned on each subset with one recipe, then greedy
         evaluation on every benchmark (worker processes; each finished run is saved, so a rerun resumes)
      -> results.json, results.md (the table), results.png (average vs budget), timing

Every random choice derives from explicit seeds: the world from --world-seed, the base model from it, each run's
subset and training order from the run's seed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tive.bench.methods import FULL, METHODS, Signals, choose_subset, task_shares
from tive.bench.model import BaseSettings, Recipe
from tive.bench.world import WorldSizes, write_world
from tive.errors import TiveError
from tive.io import sha256_json, write_json
from tive.stages import say

log = logging.getLogger("tive")

ABLATIONS = ("random_stratified", "tive_task_only", "tive_instance_only", "grad_norm", "el2n", "length")


@dataclass
class Plan:
    """What the bench runs.

    Attributes:
        budgets: the budgets (fractions) at which `tive` and `random` run.
        seeds: the seeds of every subset method (and of the full-data runs' training order).
        ablation_budget: the one budget at which the other methods run (the paper's 15%).
        ablations: the other methods.
        recipe: the fine-tuning recipe, the same for every run.
        workers: worker processes; each uses cpu_count / workers threads.
    """

    budgets: tuple[float, ...] = (0.05, 0.10, 0.15, 0.30)
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_budget: float = 0.15
    ablations: tuple[str, ...] = ABLATIONS
    recipe: Recipe = field(default_factory=Recipe)
    workers: int = 2


@dataclass
class SelectionSettings:
    """The TIVE run the signals come from: the project's defaults except where the tiny base needs otherwise.

    The warm-up starts from the bench's pre-trained base (passed as a checkpoint directory); a checkpoint's
    defaults (lr 2e-5, 1 epoch) barely move a LoRA on a 0.6M-parameter model in a few dozen steps, so the
    warm-up's rank, learning rate and epochs are set explicitly for the tiny base.
    """

    warmup_fraction: float = 0.08
    lora_rank: int = 8
    learning_rate: float = 1e-3
    epochs: int = 2
    proj_dim: int = 8192
    seed: int = 0
    choose: str = "sample"
    temperature: float = 0.1


@dataclass
class Inputs:
    """What a bench compares on: the training file, its image root and task field, benchmark files, alignment."""

    train: Path
    images: Path | None
    task_field: str | None
    evals: list[Path]
    align: Path | None
    world: dict[str, Any] | None = None


QUICK_SIZES = WorldSizes(train=1000, align=600, eval=40)
DEFAULT_SIZES = WorldSizes(train=4000, align=1500, eval=100)


QUICK_STEPS = 80
QUICK_BASE = {"vision_steps": 400, "epochs": 4}


def world_inputs(out: Path, seed: int, sizes: WorldSizes) -> Inputs:
    info = write_world(out / "world", seed, sizes)
    return Inputs(Path(info["train"]), Path(info["images"]), info["task_field"],
                  [Path(p) for p in info["eval"].values()], Path(info["align"]), world=info["config"])


def _load_records(path: Path, images: Path | None, task_field: str | None) -> list[Any]:
    from tive.data import assign_tasks, check_images, load_dataset

    dataset = load_dataset(path)
    if task_field is not None:
        assign_tasks(dataset, task_field=task_field)
    check_images(dataset, images, on_missing="error")
    return dataset.records


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def compute_signals(inputs: Inputs, out: Path, base_dir: Path, base_key: str, items: list[dict[str, Any]],
                    settings: SelectionSettings, threads: int) -> tuple[Signals, dict[str, float]]:
    """Run TIVE's stages once on the training set; add EL2N and answer lengths. Returns signals and timings."""
    import torch

    from tive.config import FeaturesOptions, PrepareOptions, WarmupOptions
    from tive.io import read_json
    from tive.rundir import ok_rows, read_manifest
    from tive.scoring import task_values
    from tive.stages import run_features, run_prepare, run_score, run_warmup

    torch.set_num_threads(threads)
    # Instance choice and temperature act at selection time only; the stages depend on the rest.
    stage_settings = {k: v for k, v in asdict(settings).items() if k not in ("choose", "temperature")}
    run_dir = out / "selection" / sha256_json({"settings": stage_settings, "base": base_key})[:12]
    timing: dict[str, float] = {}
    signals_path = run_dir / "bench_signals.npz"
    if signals_path.is_file():
        say(f"bench: selection signals already computed ({run_dir})")
        saved = np.load(signals_path, allow_pickle=False)
        timing = read_json(run_dir / "bench_timing.json")
        signals = Signals(
            tasks=[str(t) for t in saved["tasks"]], grad_norms=saved["grad_norms"], values=saved["values"],
            task_values=json.loads(str(saved["task_values"])), el2n=saved["el2n"],
            answer_tokens=saved["answer_tokens"], choose=settings.choose, temperature=settings.temperature,
        )
        return signals, timing
    started = time.perf_counter()
    run_prepare(inputs.train, run_dir, PrepareOptions(images=str(inputs.images) if inputs.images else None,
                                                      task_field=inputs.task_field))
    timing["prepare"] = _elapsed(started)
    started = time.perf_counter()
    run_warmup(run_dir, WarmupOptions(model=str(base_dir), warmup_fraction=settings.warmup_fraction,
                                      lora_rank=settings.lora_rank, learning_rate=settings.learning_rate,
                                      epochs=settings.epochs, seed=settings.seed, device="cpu"))
    timing["warmup"] = _elapsed(started)
    started = time.perf_counter()
    run_features(run_dir, FeaturesOptions(proj_dim=settings.proj_dim, device="cpu"))
    timing["features"] = _elapsed(started)
    started = time.perf_counter()
    run_score(run_dir)
    timing["score"] = _elapsed(started)
    rows = ok_rows(read_manifest(run_dir))
    if len(rows) != len(items):
        raise TiveError(f"{run_dir}: {len(rows)} ok records but {len(items)} encoded; rerun in a new --out directory")
    tasks = [row["task"] for row in rows]
    norms = np.array([row["grad_norm"] for row in rows], dtype=np.float64)
    values = np.array([row["value"] for row in rows], dtype=np.float64)
    started = time.perf_counter()
    el2n = reference_el2n(base_dir, run_dir / "warmup" / "adapter", items)
    timing["el2n"] = _elapsed(started)
    answer_tokens = np.array([int((item["labels"] != -100).sum()) for item in items], dtype=np.float64)
    t_values = task_values(tasks, norms)
    np.savez(signals_path.with_suffix(".tmp.npz"), tasks=np.array(tasks), grad_norms=norms, values=values,
             task_values=np.array(json.dumps(t_values)), el2n=el2n, answer_tokens=answer_tokens)
    os.replace(signals_path.with_suffix(".tmp.npz"), signals_path)
    write_json(run_dir / "bench_timing.json", timing)
    signals = Signals(tasks=tasks, grad_norms=norms, values=values, task_values=t_values, el2n=el2n,
                      answer_tokens=answer_tokens, choose=settings.choose, temperature=settings.temperature)
    return signals, timing


def reference_el2n(base_dir: Path, adapter_dir: Path, items: list[dict[str, Any]], batch_size: int = 32) -> np.ndarray:
    """EL2N of each record under the reference model: mean over answer tokens of ||softmax - onehot||_2."""
    import torch

    from tive.model.encode import IGNORE_INDEX, collate
    from tive.model.loading import load_with_adapter

    model, processor = load_with_adapter(base_dir, adapter_dir, "cpu")
    pad = processor.tokenizer.pad_token_id or 0
    out = np.zeros(len(items), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], pad)
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            probs = logits.softmax(-1)
            onehot = torch.zeros_like(probs).scatter_(-1, target.clamp(min=0).unsqueeze(-1), 1.0)
            err = (probs - onehot).norm(dim=-1) * mask
            out[start : start + len(target)] = (err.sum(1) / mask.sum(1).clamp(min=1)).numpy()
    return out


def encode_all(processor: Any, records: list[Any], benchmarks: list[Any]) -> dict[str, Any]:
    from tive.bench.model import encode, encode_prompt

    return {
        "items": [encode(processor, r) for r in records],
        "benchmarks": [
            {"name": b.name, "prompts": [encode_prompt(processor, r) for r in b.records],
             "metrics": b.metrics, "references": b.references}
            for b in benchmarks
        ],
    }


def plan_jobs(plan: Plan, signals: Signals) -> list[dict[str, Any]]:
    """Every (method, budget, seed) run with its subset; `full` once per seed."""
    n = len(signals.tasks)
    jobs = [{"method": FULL, "budget": 1.0, "seed": s, "positions": np.arange(n)} for s in plan.seeds]
    for budget in plan.budgets:
        for method in ("tive", "random"):
            for seed in plan.seeds:
                jobs.append({"method": method, "budget": budget, "seed": seed,
                             "positions": choose_subset(method, signals, budget, seed)})
    for method in plan.ablations:
        if method not in METHODS:
            raise TiveError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for seed in plan.seeds:
            jobs.append({"method": method, "budget": plan.ablation_budget, "seed": seed,
                         "positions": choose_subset(method, signals, plan.ablation_budget, seed)})
    return jobs


def run_jobs(jobs: list[dict[str, Any]], plan: Plan, base_key: str, cache_path: Path, base_dir: Path,
             runs_dir: Path) -> list[dict[str, Any]]:
    """Run every job not already saved in runs_dir (workers in parallel); return all results in job order."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from tive.bench import worker

    runs_dir.mkdir(parents=True, exist_ok=True)
    recipe = asdict(plan.recipe)
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for index, job in enumerate(jobs):
        job["recipe"] = recipe
        job["key"] = sha256_json({"base": base_key, "recipe": recipe, "seed": job["seed"],
                                  "positions": [int(p) for p in job["positions"]]})
        path = runs_dir / f"{job['method']}_{job['budget']:g}_{job['seed']}.json"
        job["path"] = str(path)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == job["key"]:
                results[index] = saved
                continue
        todo.append(index)
    if todo:
        cpus = os.cpu_count() or 1
        workers = max(1, min(plan.workers, len(todo)))
        threads = max(1, cpus // workers)
        say(f"bench: {len(todo)} training runs to do ({len(jobs) - len(todo)} already done), {workers} worker(s) x "
            f"{threads} thread(s)")
        # Largest subsets first, so the slowest runs do not end up alone at the end.
        todo.sort(key=lambda i: -len(jobs[i]["positions"]))
        started = time.perf_counter()
        done = 0

        def record(index: int, result: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            write_json(Path(jobs[index]["path"]), result)
            results[index] = result
            rate = (time.perf_counter() - started) / done
            say(f"bench: [{done}/{len(todo)}] {result['method']} {result['budget']:g} seed {result['seed']}: "
                f"average {result['average']:.1f} ({result['records']} records, {result['steps']} steps, "
                f"{result['train_seconds']:.0f}+{result['eval_seconds']:.0f} s; ETA {rate * (len(todo) - done):.0f} s)")

        payload = {i: {k: v for k, v in jobs[i].items() if k != "path"} for i in todo}
        if workers == 1:
            worker.init(str(cache_path), str(base_dir), threads)
            for index in todo:
                record(index, worker.run_job(payload[index]))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=worker.init,
                                     initargs=(str(cache_path), str(base_dir), threads)) as pool:
                futures = {pool.submit(worker.run_job, payload[i]): i for i in todo}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    return [results[i] for i in range(len(jobs))]


def run_bench(out: Path, inputs: Inputs, plan: Plan, base_settings: BaseSettings,
              selection: SelectionSettings) -> dict[str, Any]:
    """The whole bench; writes DIR/results.json, results.md, results.png and returns the results."""
    import torch

    from tive.bench.evalsets import load_benchmarks
    from tive.bench.model import build_base
    from tive.bench.report import summary_table, timing_lines, write_plot
    from tive.model.loading import load_base

    wall = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    # Half the cores for the main process's phases (base model, selection): with every core, torch's OpenMP
    # threads spin-wait whenever another process holds a core, and a shared 2-core machine ran the base model
    # 10x slower (112 s instead of 11 s for --quick).
    main_threads = max(1, cpus // 2)
    torch.set_num_threads(main_threads)
    records = _load_records(inputs.train, inputs.images, inputs.task_field)
    records = [r for r in records if r.ok]
    if len(records) < 20:
        raise TiveError(f"{inputs.train}: {len(records)} usable records; the bench needs at least 20")
    align = _load_records(inputs.align, inputs.images, None) if inputs.align else []
    if not align:
        say("bench: no alignment data (--align); the base model starts from random weights, unlike the paper's")
    benchmarks = load_benchmarks(inputs.evals, inputs.images)
    say(f"bench: {len(records)} training records, {len(align)} alignment records, benchmarks "
        + ", ".join(f"{b.name} ({len(b.records)})" for b in benchmarks))

    timing: dict[str, Any] = {}
    started = time.perf_counter()
    base_dir = out / "base"
    base_info = build_base(base_dir, records, align, base_settings, say=say)
    timing["base_model_seconds"] = base_info["seconds"]
    timing["base_model_cached"] = base_info["cached"]

    _, processor = load_base(base_dir)
    cache_path = out / "cache" / f"encoded-{base_info['key'][:12]}.pt"
    if cache_path.is_file():
        encoded = torch.load(cache_path, weights_only=False)
    else:
        encoded = encode_all(processor, records, benchmarks)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(encoded, cache_path.with_suffix(".tmp"))
        os.replace(cache_path.with_suffix(".tmp"), cache_path)

    signals, selection_timing = compute_signals(inputs, out, base_dir, base_info["key"], encoded["items"],
                                                selection, main_threads)
    started = time.perf_counter()
    jobs = plan_jobs(plan, signals)
    selection_timing["choose_all_subsets"] = _elapsed(started)
    timing["selection"] = selection_timing
    del encoded

    results = run_jobs(jobs, plan, base_info["key"], cache_path, base_dir, out / "runs")
    shares = {f"{job['method']}_{job['budget']:g}_{job['seed']}": task_shares(signals, job["positions"])
              for job in jobs}
    timing["training"] = {
        "runs": len(results),
        "train_seconds_total": round(sum(r["train_seconds"] for r in results), 1),
        "eval_seconds_total": round(sum(r["eval_seconds"] for r in results), 1),
    }
    timing["wall_seconds"] = _elapsed(wall)
    names = [b.name for b in benchmarks]
    output = {
        "benchmarks": names,
        "runs": [
            {"method": r["method"], "budget": r["budget"], "seed": r["seed"], "scores": r["scores"],
             "average": r["average"], "records": r["records"], "steps": r["steps"],
             "train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"]}
            for r in results
        ],
        "inputs": {"train": str(inputs.train), "evals": [str(p) for p in inputs.evals],
                   "align": str(inputs.align) if inputs.align else None, "world": inputs.world},
        "plan": {"budgets": list(plan.budgets), "seeds": list(plan.seeds), "ablation_budget": plan.ablation_budget,
                 "ablations": list(plan.ablations), "recipe": asdict(plan.recipe)},
        "base_model": {k: v for k, v in base_info.items() if k not in ("key", "cached")},
        "selection": asdict(selection),
        "task_values": signals.task_values,
        "task_sizes": signals.task_sizes,
        "task_shares": shares,
        "timing": timing,
    }
    write_json(out / "results.json", output)
    table = summary_table(output)
    (out / "results.md").write_text(table + "\n\n" + "\n".join(timing_lines(output)) + "\n", encoding="utf-8")
    plot = write_plot(output, out / "results.png")
    say("\n" + table)
    for line in timing_lines(output):
        say(line)
    say(f"bench: results in {out / 'results.json'}, table in {out / 'results.md'}"
        + (f", plot in {plot}" if plot else ""))
    return output


__all__ = ["Plan", "SelectionSettings", "Inputs", "run_bench", "world_inputs", "plan_jobs",
           "DEFAULT_SIZES", "QUICK_SIZES", "QUICK_STEPS", "QUICK_BASE"]
