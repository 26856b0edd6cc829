"""`tive bench`: the miniature of the paper's experiment, end to end.

    inputs (the built-in world, or the user's train file + images + benchmark files)
      -> base model (tiny LLaVA pre-trained on the alignment set, or without one on the training images'
         bag of words; cached)
      -> selection signals: TIVE's stages once (prepare, warmup, features, score) + EL2N + answer lengths
      -> subsets: every method x budget x seed, exactly the same size at each budget
      -> training runs: a fresh copy of the base fine-tuned on each subset under each recipe (equal steps, equal
         epochs), then greedy
         evaluation on every benchmark (worker processes; each finished run is saved, so a rerun resumes)
      -> results.json, results.md (the table, with each benchmark's chance level and a flag where the full-data
         run is within 10 points of it), results.png (average vs budget), timing

Every cache (base model, encoded records, selection signals, runs) is keyed on the content it depends on
(`tive.bench.keys`): rerunning into the same --out with other benchmarks, another task field or edited files
recomputes what changed and reuses the rest.

Every random choice derives from explicit seeds: the world from --world-seed, the base model from it, each run's
subset and training order from the run's seed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tive.bench.defects import CHOICE_SCORES, Truth, method_defects, read_truth
from tive.bench.methods import CONTROLS, FULL, METHODS, VARIANT_BASES, VARIANTS, Signals, choose_subset, task_shares
from tive.bench.model import RECIPES, BaseSettings, Recipe
from tive.bench.options import check_fields, default_of, flag_of
from tive.bench.world import DEFAULT_WORLDS, WorldSizes, write_world
from tive.config import FeaturesOptions, SelectOptions, WarmupOptions, opt
from tive.data.records import Record
from tive.errors import TiveError
from tive.io import sha256_json, write_json
from tive.select import DEFAULT_METHOD, DEFAULT_TEMPERATURE, reduce_features
from tive.stages import say

log = logging.getLogger("tive")

ABLATIONS = ("random_stratified", "tive_task_only", "tive_instance_only", "tive_diverse", "clusters",
             "grad_norm_balanced", "el2n_balanced", "length_balanced", "grad_norm", "el2n", "length",
             "tive_lastk", "tive_proxy", "clean_oracle", "task_oracle")
# The default plan (issue 19, item 7): in each world at 15% with equal steps and 4 seeds, full, random, tive and
# random_stratified, and in a world with known defects the two controls: 40 runs over clean and mixed.
DEFAULT_METHODS = ("random_stratified", "clean_oracle", "task_oracle")


def parse_budgets(text: str) -> tuple[float, ...]:
    """`--budgets 0.05,0.15` -> (0.05, 0.15), sorted and without repeats (bounds: `Plan`'s check)."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise TiveError(f"--budgets {text}: {part!r} is not a number; give fractions such as 0.05,0.15") from None
    return tuple(sorted(set(values)))


def parse_names(text: str) -> tuple[str, ...]:
    """`--ablations el2n,length` -> ("el2n", "length"); an empty text is no method."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass
class Plan:
    """What the bench runs.

    Attributes:
        budgets: the budgets (fractions) at which `tive` and `random` run.
        seeds: how many seeds (0..seeds-1) every subset method runs with (and the full-data runs' training order).
        ablation_budget: the one budget at which the other methods run (the paper's 15%).
        ablations: the other methods (`--methods`); the controls `clean_oracle` and `task_oracle` run only in a
            world with known defects.
        recipes: which recipes every subset is trained under (`model.RECIPES`: equal steps, equal epochs).
        recipe: the fine-tuning settings, the same for every run.
        workers: worker processes (None: the number of CPUs, at most 4); each uses cpu_count / workers threads.
    """

    budgets: tuple[float, ...] = opt((0.15,), "budgets (fractions of the training records) at which tive and random "
                                     "run, comma-separated (e.g. 0.05,0.1,0.15,0.3)", parse=parse_budgets, above=0,
                                     below=1)
    seeds: int = opt(4, "seeds per subset method (seeds 0..N-1; also the full-data runs' training order)", min=1)
    ablation_budget: float = opt(0.15, "the budget at which the other methods run (the paper's 15%); without "
                                 "this flag, the one of --budgets nearest to it", above=0, below=1)
    ablations: tuple[str, ...] = opt(DEFAULT_METHODS, "the methods beside tive and random, comma-separated, at the "
                                     f"ablation budget; all of them: {','.join(ABLATIONS)}; the controls clean_oracle "
                                     "and task_oracle run only in a world with known defects", parse=parse_names,
                                     flag="--methods", aliases=("--ablations",))
    recipes: tuple[str, ...] = opt(("steps",), "fine-tuning recipes, comma-separated: steps (every run the same "
                                   "optimiser steps: the data's content) and epochs (every run the full data's "
                                   "epochs: the paper's, a subset costs less)", parse=parse_names)
    recipe: Recipe = field(default_factory=Recipe)
    workers: int | None = opt(None, "training processes in parallel (default: the number of CPUs, at most 4)", min=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.recipes or any(r not in RECIPES for r in self.recipes):
            raise TiveError(f"{flag_of(Plan, 'recipes')} {','.join(self.recipes)}: choose from {', '.join(RECIPES)}")
        unknown = [m for m in self.ablations if m not in METHODS]
        if unknown:
            raise TiveError(f"{flag_of(Plan, 'ablations')} {','.join(self.ablations)}: unknown method "
                            f"{unknown[0]!r}; choose from {', '.join(METHODS)}")


@dataclass
class SelectionSettings:
    """The TIVE run the signals come from: the project's defaults except where the tiny base needs otherwise.

    The warm-up starts from the bench's pre-trained base (passed as a checkpoint directory); a checkpoint's
    defaults (lr 2e-5, 1 epoch) barely move a LoRA on a 0.6M-parameter model in a few dozen steps, so the
    warm-up's rank, learning rate and epochs are set explicitly for the tiny base. The other defaults are read
    from the project's option classes (`tive.config`, `tive.select`), not restated.
    """

    warmup_fraction: float = opt(default_of(WarmupOptions, "warmup_fraction"),
                                 "share of the training records in TIVE's warm-up, as `tive run`",
                                 above=0, max=1)
    lora_rank: int = opt(8, "LoRA rank of TIVE's warm-up", flag="--warmup-lora-rank", min=1)
    lora_targets: str = opt(default_of(WarmupOptions, "lora_targets"), "modules of the language model that get "
                            "LoRA in TIVE's warm-up, as `tive run`", flag="--warmup-lora-targets")
    learning_rate: float = opt(1e-3, "learning rate of TIVE's warm-up", flag="--warmup-learning-rate", above=0)
    epochs: int = opt(2, "epochs of TIVE's warm-up", flag="--warmup-epochs", min=1)
    proj_dim: int = opt(default_of(FeaturesOptions, "proj_dim"),
                        "projected gradient dimension, as `tive run`", min=1)
    seed: int = opt(0, "seed of TIVE's warm-up sample and LoRA initialisation", flag="--warmup-seed", min=0)
    choose: str = opt(DEFAULT_METHOD, "TIVE's instance choice within a task, as `tive run`",
                      choices=SelectOptions.__dataclass_fields__["choose"].metadata["choices"])
    temperature: float = opt(DEFAULT_TEMPERATURE, "TIVE's sampling temperature, as `tive run`", above=0)
    layers: str = "all"  # the features' LoRA matrices (`tive features --layers`); `tive_lastk` uses last:1

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class Inputs:
    """What a bench compares on: the training file, its image root and task field, benchmark files, alignment."""

    train: Path
    images: Path | None
    task_field: str | None
    evals: list[Path]
    align: Path | None
    world: dict[str, Any] | None = None
    prior: Path | None = None  # the language prior's stream (built-in world only)
    scenes: Path | None = None  # the recorded scenes of every image (built-in world only): the slot encoder's table
    defects: Path | None = None  # the world's ground truth (built-in world only; tive's stages never see it)
    name: str = "own"  # the world's kind (clean, mixed, ...), or "own" for your own data


@dataclass
class Shared:
    """What the worlds of one bench run share: the base model, the prior's cache and the slot encoder's table (the
    recorded scenes of every world, so one base serves them all)."""

    base_dir: Path
    prior_root: Path
    table: dict[str, Any] | None = None


# What --quick changes, per settings class (field -> value); flags the user gives still win.
QUICK: dict[type, dict[str, Any]] = {
    WorldSizes: {"train": 1000, "align": 600, "eval": 40, "prior": 1500},
    Plan: {"budgets": (0.15,), "seeds": 1},
    Recipe: {"steps": 80},
    BaseSettings: {"vision_steps": 400, "epochs": 4, "prior_steps": 300},
}


def world_inputs(out: Path, seed: int, sizes: WorldSizes, kind: str = "clean") -> Inputs:
    """The built-in world of `kind` and seed `seed`, written to out/world (kept when it is already there)."""
    info = write_world(out / "world", seed, sizes, kind=kind)
    return Inputs(Path(info["train"]), Path(info["images"]), info["task_field"],
                  [Path(p) for p in info["eval"].values()], Path(info["align"]), world=info["config"],
                  prior=Path(info["prior"]), scenes=Path(info["scenes"]), defects=Path(info["defects"]), name=kind)


def _load_records(path: Path, images: Path | None, task_field: str | None) -> list[Any]:
    from tive.data import assign_tasks, check_images, load_dataset

    dataset = load_dataset(path)
    if task_field is not None:
        assign_tasks(dataset, task_field=task_field)
    check_images(dataset, images, on_missing="error")
    return dataset.records


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def require_all_ok(run_dir: Path, expected: int) -> list[dict[str, Any]]:
    """The manifest rows of the selection run, refusing any record a stage skipped (named, with its reason).

    Every method is compared on the same records and a run's subset positions index the encoded training
    records, so a skipped record would misalign them; the bench's own world has none.
    """
    from tive.rundir import read_manifest

    rows = read_manifest(run_dir)
    skipped = [row for row in rows if row["status"] != "ok"]
    if skipped:
        shown = "; ".join(f"record {row['index']} (id {row['id']}): {row['status']}" for row in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise TiveError(f"{run_dir}: TIVE's stages skipped {len(skipped)} of {len(rows)} training records: {shown}{more} "
                        "(see manifest.jsonl); the bench compares every method on the same records, so fix or "
                        "remove them from --train")
    if len(rows) != expected:
        raise TiveError(f"{run_dir}: {len(rows)} records in manifest.jsonl but {expected} training records; "
                        "rerun in a new --out directory")
    return rows


def compute_signals(inputs: Inputs, out: Path, base_dir: Path, key: str, items: list[dict[str, Any]],
                    settings: SelectionSettings, threads: int, seed: int = 0) -> tuple[Signals, dict[str, float], Path]:
    """Run TIVE's stages once on the training set for bench seed `seed` (warm-up seed `settings.seed + seed`,
    projection seed `seed`: a TIVE seed varies its reference model and projection, not only its sampling); add
    EL2N and answer lengths. Returns signals, timings and the run directory, whose name is `key` (the base, the
    training records with their tasks, the task field) with the stage settings and the seed."""
    import torch

    from tive.config import PrepareOptions
    from tive.io import read_json
    from tive.scoring import task_values
    from tive.stages import run_features, run_prepare, run_score, run_warmup

    torch.set_num_threads(threads)
    # Instance choice and temperature act at selection time only; the stages depend on the rest.
    stage_settings = {k: v for k, v in asdict(settings).items() if k not in ("choose", "temperature")}
    if settings.layers == "all":
        del stage_settings["layers"]  # as before the setting existed: the default's caches stay valid
    run_dir = out / "selection" / sha256_json({"settings": stage_settings, "inputs": key, "seed": seed})[:12]
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
            features=saved["features"],
        )
        return signals, timing, run_dir
    started = time.perf_counter()
    run_prepare(inputs.train, run_dir, PrepareOptions(images=str(inputs.images) if inputs.images else None,
                                                      task_field=inputs.task_field))
    timing["prepare"] = _elapsed(started)
    started = time.perf_counter()
    run_warmup(run_dir, WarmupOptions(model=str(base_dir), warmup_fraction=settings.warmup_fraction,
                                      lora_rank=settings.lora_rank, lora_targets=settings.lora_targets,
                                      learning_rate=settings.learning_rate,
                                      epochs=settings.epochs, seed=settings.seed + seed, device="cpu"))
    timing["warmup"] = _elapsed(started)
    started = time.perf_counter()
    run_features(run_dir, FeaturesOptions(proj_dim=settings.proj_dim, proj_seed=seed, device="cpu",
                                          layers=settings.layers))
    timing["features"] = _elapsed(started)
    started = time.perf_counter()
    run_score(run_dir)
    timing["score"] = _elapsed(started)
    rows = require_all_ok(run_dir, len(items))
    tasks = [row["task"] for row in rows]
    norms = np.array([row["grad_norm"] for row in rows], dtype=np.float64)
    values = np.array([row["value"] for row in rows], dtype=np.float64)
    started = time.perf_counter()
    el2n = reference_el2n(base_dir, run_dir / "warmup" / "adapter", items)
    timing["el2n"] = _elapsed(started)
    answer_tokens = np.array([int((item["labels"] != -100).sum()) for item in items], dtype=np.float64)
    t_values = task_values(tasks, norms)
    features = reduce_features(np.load(run_dir / "features" / "features.npy", mmap_mode="r"))
    np.savez(signals_path.with_suffix(".tmp.npz"), tasks=np.array(tasks), grad_norms=norms, values=values,
             task_values=np.array(json.dumps(t_values)), el2n=el2n, answer_tokens=answer_tokens, features=features)
    os.replace(signals_path.with_suffix(".tmp.npz"), signals_path)
    write_json(run_dir / "bench_timing.json", timing)
    signals = Signals(tasks=tasks, grad_norms=norms, values=values, task_values=t_values, el2n=el2n,
                      answer_tokens=answer_tokens, choose=settings.choose, temperature=settings.temperature,
                      features=features)
    return signals, timing, run_dir


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
    """Training items; per benchmark the prompts, the reference's answer tokens (for its log-likelihood) and
    each cloze record's options' answer tokens."""
    from tive.bench.model import answer_ids, encode, encode_prompt

    return {
        "items": [encode(processor, r) for r in records],
        "benchmarks": [
            {"name": b.name, "prompts": [encode_prompt(processor, r) for r in b.records],
             "metrics": b.metrics, "references": b.references,
             "reference_ids": [answer_ids(processor, ref) for ref in b.references],
             "options": [None if opts is None else [answer_ids(processor, o) for o in opts]
                         for opts in (b.options or [None] * len(b.records))],
             "option_texts": list(b.options or [None] * len(b.records))}
            for b in benchmarks
        ],
    }


def plan_jobs(plan: Plan, signals: Signals | list[Signals]) -> list[dict[str, Any]]:
    """Every (method, budget, seed) run with its subset; `full` once per seed. `signals`: one per seed (seed s's
    subsets come from the reference model and projection of TIVE seed s), or one for every seed."""
    per_seed = signals if isinstance(signals, list) else [signals] * plan.seeds
    if len(per_seed) != plan.seeds:
        raise TiveError(f"{len(per_seed)} sets of selection signals for {plan.seeds} seeds")
    n = len(per_seed[0].tasks)
    seeds = range(plan.seeds)
    subsets = []
    for budget in plan.budgets:
        for method in ("tive", "random"):
            for seed in seeds:
                subsets.append((method, budget, seed, choose_subset(method, per_seed[seed], budget, seed)))
    for method in plan.ablations:
        if method not in METHODS:
            raise TiveError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if method in CONTROLS and not has_defects(per_seed[0]):
            continue  # a control of the defect worlds: nothing to control in a clean world or your own data
        for seed in seeds:
            subsets.append((method, plan.ablation_budget, seed,
                            choose_subset(method, per_seed[seed], plan.ablation_budget, seed)))
    # The full-data run is the same under both recipes: one per seed.
    jobs = [{"method": FULL, "budget": 1.0, "seed": s, "positions": np.arange(n), "recipe_name": plan.recipes[0],
             "steps": plan.recipe.steps} for s in seeds]
    for recipe in plan.recipes:
        for method, budget, seed, positions in subsets:
            jobs.append({"method": method, "budget": budget, "seed": seed, "positions": positions,
                         "recipe_name": recipe, "steps": plan.recipe.steps_for(recipe, len(positions), n)})
    return jobs


def attach_truth(signals: Signals, truth: Truth | None) -> Signals:
    """The signals with the world's ground truth the oracles read (none for your own data)."""
    if truth is not None:
        signals.defective = truth.defective
        signals.oracle_skip_tasks = (*truth.known_tasks, *truth.trap_tasks)
    return signals


def defect_table(truth: Truth, per_seed: list[Signals], jobs: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Per method at the ablation budget (first recipe): what it chose of the world's known defects, and the AUROC
    of its choice score (`tive.bench.defects`)."""
    table: dict[str, Any] = {}
    for method in dict.fromkeys(j["method"] for j in jobs if j["method"] != FULL):
        runs = [j for j in jobs if j["method"] == method and j["budget"] == plan.ablation_budget
                and j["recipe_name"] == plan.recipes[0]]
        if not runs:
            continue
        source = VARIANTS[method][0] if method in VARIANTS else method
        attribute = CHOICE_SCORES.get(source)
        scores = None if attribute is None else [
            getattr(per_seed[j["seed"]].variants[method] if method in VARIANTS else per_seed[j["seed"]], attribute)
            for j in runs]
        table[method] = {"budget": plan.ablation_budget,
                         **method_defects(truth, per_seed[0].tasks, [j["positions"] for j in runs], scores)}
    return table


def has_defects(signals: Signals) -> bool:
    """Whether the world behind these signals has known defects (its oracles differ from stratified random)."""
    return signals.defective is not None and bool(signals.defective.any() or signals.oracle_skip_tasks)


def default_workers() -> int:
    """Training processes when --workers is not given: the number of CPUs, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def run_jobs(jobs: list[dict[str, Any]], plan: Plan, inputs_key: str, cache_path: Path, base_dir: Path,
             runs_dir: Path) -> list[dict[str, Any]]:
    """Run every job not already saved in runs_dir (workers in parallel); return all results in job order.

    A saved run is reused only when its key matches: `inputs_key` (what the encoded cache holds: the base
    model, the training records, the benchmarks), the recipe, the seed and the subset.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from tive.bench import worker

    runs_dir.mkdir(parents=True, exist_ok=True)
    recipe = asdict(plan.recipe)
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for index, job in enumerate(jobs):
        job["recipe"] = recipe
        job["key"] = sha256_json({"inputs": inputs_key, "recipe": recipe, "steps": job["steps"], "seed": job["seed"],
                                  "positions": [int(p) for p in job["positions"]]})
        suffix = "" if job["method"] == FULL or job["recipe_name"] == "steps" else f"_{job['recipe_name']}"
        path = runs_dir / f"{job['method']}_{job['budget']:g}_{job['seed']}{suffix}.json"
        job["path"] = str(path)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == job["key"]:
                results[index] = saved
                continue
        todo.append(index)
    if todo:
        cpus = os.cpu_count() or 1
        workers = max(1, min(plan.workers if plan.workers is not None else default_workers(), len(todo)))
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
            say(f"bench: [{done}/{len(todo)}] {result['method']} {result['budget']:g} seed {result['seed']}"
                + ("" if result["method"] == FULL else f" (equal {result['recipe']})") + ": "
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


def alignment_sources(inputs: Inputs, records: list[Record]) -> tuple[list[Record], list[Record], str, str]:
    """What the base model is pre-trained on: (caption records, bag-of-words records, their name, a sentence).

    With an alignment file (the built-in world's captions, or `--align`), both phases use it, as LLaVA's
    alignment stage. Without one, the vision tower and projector learn the bag of words of the training records'
    answers from their images (the same vision pre-training the built-in world uses, on the user's own
    images) and the caption phase is skipped; the language model is not pre-trained on the training answers,
    so the full-data run keeps no head start over the subsets beyond what every method's base shares.
    """
    if inputs.align is not None:
        align = [r for r in _load_records(inputs.align, inputs.images, None) if r.ok]
        if not align:
            raise TiveError(f"--align {inputs.align}: no usable records")
        return align, align, "alignment records", (
            f"bench: base model pre-trained on the {len(align)} alignment records of {inputs.align} (bag of words, "
            "then captions)")
    vision = [r for r in records if len(r.images) == 1]
    if not vision:
        return [], [], "training images", (
            "bench: no --align and no training record with exactly one image: the base model gets no vision "
            "pre-training and is likely blind (expect benchmarks at chance); pass --align CAPTIONS.json")
    return [], vision, "training images", (
        f"bench: no --align: the base model's vision tower is pre-trained on the images of the {len(vision)} "
        "training records with one image (the bag of words of their answers; no caption phase); pass "
        "--align CAPTIONS.json for LLaVA's caption alignment instead")


_ITEMS: dict[str, list[dict[str, Any]]] = {}  # encoded records a selection process has read, by file


def _selection_job(inputs: Inputs, out: Path, base_dir: Path, key: str, items_path: Path,
                   settings: SelectionSettings, threads: int, seed: int, slots: bool) -> tuple[Signals, dict[str, float], Path]:
    """One selection run, here or in a worker process (the slot model's classes registered there too). The encoded
    records are read from `items_path` (a file holding {"items": [...]}), never sent to the process: thousands of
    tensors sent between processes each take a file descriptor and ran out of them at 4,000 records."""
    import torch

    if slots:
        from tive.bench.slots import register

        register()
    if str(items_path) not in _ITEMS:
        _ITEMS.clear()
        _ITEMS[str(items_path)] = torch.load(items_path, weights_only=False)["items"]
    return compute_signals(inputs, out, base_dir, key, _ITEMS[str(items_path)], settings, threads, seed)


def run_selections(inputs: Inputs, out: Path, tasks: list[tuple[Any, ...]], plan: Plan,
                   slots: bool) -> list[tuple[Signals, dict[str, float], Path]]:
    """Every selection run of `tasks` ((method or None, seed, base, key, items file, settings)), in task order: in
    worker processes (as many as the training runs get, each with cpu_count / workers threads) when there are
    several, else here."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    cpus = os.cpu_count() or 1
    workers = max(1, min(plan.workers if plan.workers is not None else default_workers(), len(tasks)))
    threads = max(1, cpus // workers)
    if workers == 1:
        return [_selection_job(inputs, out, base, key, items, settings, max(1, cpus // 2), seed, slots)
                for _, seed, base, key, items, settings in tasks]
    say(f"bench: {len(tasks)} selection runs (TIVE's stages), {workers} worker(s) x {threads} thread(s)")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_selection_job, inputs, out, base, key, items, settings, threads, seed, slots)
                   for _, seed, base, key, items, settings in tasks]
        return [future.result() for future in futures]


def build_variant_base(shared: Shared, size: str, records: list[Record], align: list[Record], prior: list[Record],
                       table: dict[str, Any], base_settings: BaseSettings, keys: dict[str, str],
                       cache_dir: Path) -> tuple[Path, str, Path]:
    """A slot base of another size (`tive_proxy`'s reference model, with its own prior and caption phase, in
    DIR/base_<size>), the key of its selection runs and the file of the training records encoded by its
    processor (in `cache_dir`, by that key)."""
    from dataclasses import replace as replaced

    import torch

    from tive.bench.model import build_slot_base, encode
    from tive.model.loading import load_base

    base_dir = shared.base_dir.with_name(f"{shared.base_dir.name}_{size}")
    info = build_slot_base(base_dir, shared.prior_root, records, align, prior, table,
                           replaced(base_settings, size=size), say=say)
    key = sha256_json({"base": info["key"], "train": keys["selection_inputs"]})
    path = cache_dir / f"encoded-{size}-{key[:12]}.pt"
    if not path.is_file():
        _, processor = load_base(base_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"items": [encode(processor, r) for r in records]}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return base_dir, key, path


def resolve_vision(settings: BaseSettings, inputs: Inputs) -> str:
    """`slots` or `pixels`: `auto` is slots for the built-in world (its scenes are recorded), pixels otherwise."""
    if settings.vision == "pixels":
        return "pixels"
    if inputs.scenes is None:
        if settings.vision == "slots":
            raise TiveError("--vision slots needs the built-in world's recorded scenes; with --train data use "
                            "--vision pixels (or leave --vision out)")
        return "pixels"
    return "slots"


def run_bench(out: Path, inputs: Inputs, plan: Plan, base_settings: BaseSettings,
              selection: SelectionSettings, shared: Shared | None = None) -> dict[str, Any]:
    """The bench on one world (or your own data); writes DIR/results.json, results.md, results.png and returns the
    results. `shared`: the base model, prior cache and slot table the worlds of one run share (`run_worlds`);
    by default DIR/base, DIR/prior and this world's recorded scenes."""
    import torch

    from tive.bench.evalsets import chance_level, load_benchmarks, seen_in_training
    from tive.bench.keys import benchmarks_key, records_key
    from tive.bench.model import build_base
    from tive.bench.report import chance_lines, chance_summary, defects_markdown, summary_table, timing_lines, write_plot
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
    align, vision, vision_source, sentence = alignment_sources(inputs, records)
    if resolve_vision(base_settings, inputs) == "pixels":
        say(sentence)
    benchmarks = load_benchmarks(inputs.evals, inputs.images)
    say(f"bench: {len(records)} training records, {len(align)} alignment records, benchmarks "
        + ", ".join(f"{b.name} ({len(b.records)})" for b in benchmarks))
    seen = seen_in_training(benchmarks, [*records, *align])
    if any(seen.values()):
        say("bench: warning: benchmark records whose image is also a training or alignment image (by content): "
            + ", ".join(f"{name} {n}/{len(b.records)}" for b, (name, n) in zip(benchmarks, seen.items()) if n))

    timing: dict[str, Any] = {}
    shared = shared if shared is not None else Shared(out / "base", out / "prior")
    base_dir = shared.base_dir
    vision_kind = resolve_vision(base_settings, inputs)
    needs_base = [m for m in plan.ablations if m in VARIANT_BASES]
    if needs_base and vision_kind != "slots":
        raise TiveError(f"--methods {','.join(needs_base)}: selects with a smaller bench model, which needs the "
                        "built-in world's slot vision; leave it out with --train data or --vision pixels")
    if vision_kind == "slots":
        from tive.bench.model import build_slot_base
        from tive.bench.slots import read_scene_table, register

        register()
        prior = [r for r in _load_records(inputs.prior, inputs.images, None) if r.ok] if inputs.prior else []
        say(f"bench: vision: word-like slots from the world's recorded scenes; language prior on {len(prior)} "
            "prior records")
        table = shared.table if shared.table is not None else read_scene_table(inputs.scenes)
        base_info = build_slot_base(base_dir, shared.prior_root, records, align, prior, table, base_settings, say=say)
    else:
        base_info = build_base(base_dir, records, align, base_settings, say=say, vision=vision,
                               vision_source=vision_source)
    timing["base_model_seconds"] = base_info["seconds"]
    timing["base_model_cached"] = base_info["cached"]

    # Every cache is keyed on all its content depends on (see tive.bench.keys): the encoded records and prompts
    # on the base model, the training records and the benchmarks; the selection on the base model, the training
    # records with their tasks and the task field; each run on the encoded inputs, its recipe, seed and subset.
    keys = {
        "base": base_info["key"],
        "train": records_key(records),
        "benchmarks": benchmarks_key(benchmarks),
    }
    keys["encoded"] = sha256_json({k: keys[k] for k in ("base", "train", "benchmarks")})
    keys["selection_inputs"] = sha256_json({"base": keys["base"], "train": records_key(records, task=True),
                                            "task_field": inputs.task_field})
    _, processor = load_base(base_dir)
    cache_path = out / "cache" / f"encoded-{keys['encoded'][:12]}.pt"
    if cache_path.is_file():
        encoded = torch.load(cache_path, weights_only=False)
    else:
        encoded = encode_all(processor, records, benchmarks)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(encoded, cache_path.with_suffix(".tmp"))
        os.replace(cache_path.with_suffix(".tmp"), cache_path)

    truth = read_truth(inputs.defects, [str(r.record_id) for r in records]) if inputs.defects is not None else None
    # TIVE's stages once per seed, and once more per seed for each variant method (`methods.VARIANTS`); the runs are
    # independent, so they go to worker processes like the training runs.
    tasks: list[tuple[str | None, int, Path, str, Path, SelectionSettings]] = []
    variant_bases: dict[str, tuple[Path, str, Path]] = {}
    for seed in range(plan.seeds):
        tasks.append((None, seed, base_dir, keys["selection_inputs"], cache_path, selection))
        for method in (m for m in plan.ablations if m in VARIANTS):
            variant_base, variant_key, variant_items = base_dir, keys["selection_inputs"], cache_path
            if method in VARIANT_BASES:
                if method not in variant_bases:
                    variant_bases[method] = build_variant_base(shared, VARIANT_BASES[method], records, align, prior,
                                                               table, base_settings, keys, out / "cache")
                variant_base, variant_key, variant_items = variant_bases[method]
            tasks.append((method, seed, variant_base, variant_key, variant_items,
                          replace(selection, **VARIANTS[method][1])))
    outcomes = run_selections(inputs, out, tasks, plan, vision_kind == "slots")
    per_seed, selection_timings, selection_dirs = [], [], []
    for (method, seed, *_), (seed_signals, seed_timing, seed_dir) in zip(tasks, outcomes):
        if method is None:
            per_seed.append(attach_truth(seed_signals, truth))
            selection_timings.append(seed_timing)
            selection_dirs.append(seed_dir)
        else:
            per_seed[seed].variants[method] = seed_signals
            selection_timings[seed] = {**selection_timings[seed],
                                       **{f"{method}_{k}": v for k, v in seed_timing.items()}}
    signals = per_seed[0]
    selection_timing = {name: round(sum(t.get(name, 0.0) for t in selection_timings), 1)
                        for name in selection_timings[0]}
    started = time.perf_counter()
    jobs = plan_jobs(plan, per_seed)
    selection_timing["choose_all_subsets"] = _elapsed(started)
    timing["selection"] = selection_timing
    del encoded

    results = run_jobs(jobs, plan, keys["encoded"], cache_path, base_dir, out / "runs")
    shares = {f"{job['method']}_{job['budget']:g}_{job['seed']}": task_shares(per_seed[job["seed"]], job["positions"])
              for job in jobs if job["recipe_name"] == plan.recipes[0]}
    timing["training"] = {
        "runs": len(results),
        "train_seconds_total": round(sum(r["train_seconds"] for r in results), 1),
        "eval_seconds_total": round(sum(r["eval_seconds"] for r in results), 1),
    }
    timing["wall_seconds"] = _elapsed(wall)
    names = [b.name for b in benchmarks]
    output = {
        "world": inputs.name,
        "benchmarks": names,
        "items": {b.name: len(b.records) for b in benchmarks},
        "chance": {b.name: chance_level(b) for b in benchmarks},
        "runs": [
            {"world": inputs.name, "method": r["method"], "budget": r["budget"], "seed": r["seed"],
             "recipe": r["recipe"],
             "scores": r["scores"], "logliks": r.get("logliks", {}),
             "average": r["average"], "records": r["records"], "steps": r["steps"],
             "train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"]}
            for r in results
        ],
        "inputs": {"train": str(inputs.train), "evals": [str(p) for p in inputs.evals],
                   "task_field": inputs.task_field, "align": str(inputs.align) if inputs.align else None,
                   "world": inputs.world, "eval_seen_in_training": seen},
        "plan": {"budgets": list(plan.budgets), "seeds": list(range(plan.seeds)),
                 "ablation_budget": plan.ablation_budget, "ablations": list(plan.ablations),
                 "recipes": list(plan.recipes), "recipe": asdict(plan.recipe)},
        "base_model": {k: v for k, v in base_info.items() if k not in ("key", "cached")},
        "selection": asdict(selection),
        "task_values": signals.task_values,
        "defects": defect_table(truth, per_seed, jobs, plan) if truth is not None and truth.any else {},
        "task_values_per_seed": [seed_signals.task_values for seed_signals in per_seed],
        "task_sizes": signals.task_sizes,
        "task_shares": shares,
        "caches": {"keys": keys, "encoded": str(cache_path), "selection": [str(d) for d in selection_dirs]},
        "timing": timing,
    }
    output["at_chance"] = chance_summary(output)
    write_json(out / "results.json", output)
    table = summary_table(output)
    if output["defects"]:
        table += "\n\n" + defects_markdown(output["defects"])
    notes = chance_lines(output)
    (out / "results.md").write_text(table + "\n\n" + "".join(line + "\n" for line in notes)
                                    + "\n".join(timing_lines(output)) + "\n", encoding="utf-8")
    plot = write_plot(output, out / "results.png")
    say("\n" + table)
    for line in notes + timing_lines(output):
        say(line)
    say(f"bench: results in {out / 'results.json'}, table in {out / 'results.md'}"
        + (f", plot in {plot}" if plot else ""))
    return output


def run_worlds(out: Path, seed: int, kinds: tuple[str, ...], sizes: WorldSizes, plan: Plan,
               base_settings: BaseSettings, selection: SelectionSettings) -> dict[str, Any]:
    """The bench on each built-in world of `kinds` for world seed `seed` (default: clean and mixed), one after the
    other in DIR/<kind>/, sharing one base model (DIR/base) and one language prior (DIR/prior); then DIR/results.json
    (every run with its world, the chance levels, each world's defect table) and DIR/results.md."""
    from tive.bench.report import combined_markdown
    from tive.bench.slots import read_scene_table

    wall = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    worlds = {kind: world_inputs(out / kind, seed, sizes, kind) for kind in kinds}
    table: dict[str, Any] = {}
    for inputs in worlds.values():
        table.update(read_scene_table(inputs.scenes))
    shared = Shared(out / "base", out / "prior", table)
    per_world = {}
    for kind, inputs in worlds.items():
        say(f"bench: world {kind} ({', '.join(inputs.world['defects']) or 'no defects'})")
        per_world[kind] = run_bench(out / kind, inputs, plan, base_settings, selection, shared)
    first = per_world[kinds[0]]
    output = {
        "world_seed": seed,
        "worlds": list(kinds),
        "benchmarks": first["benchmarks"],
        "chance": first["chance"],
        "items": {name: min(r["items"][name] for r in per_world.values()) for name in first["benchmarks"]},
        "chance_by_world": {kind: r["chance"] for kind, r in per_world.items()},
        "runs": [run for r in per_world.values() for run in r["runs"]],
        "defects": {kind: r["defects"] for kind, r in per_world.items()},
        "design": {kind: worlds[kind].world["defects"] for kind in kinds},
        "plan": first["plan"],
        "timing": {"wall_seconds": _elapsed(wall), "worlds": {kind: r["timing"] for kind, r in per_world.items()}},
        "per_world": {kind: str(out / kind / "results.json") for kind in kinds},
    }
    write_json(out / "results.json", output)
    text = combined_markdown(output, per_world)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    say(f"bench: every world's results in {out / 'results.json'} and {out / 'results.md'} "
        f"({output['timing']['wall_seconds'] / 60:.1f} min)")
    return output


__all__ = ["Plan", "SelectionSettings", "Inputs", "Shared", "run_bench", "run_worlds", "world_inputs", "plan_jobs",
           "run_jobs", "QUICK", "alignment_sources", "require_all_ok", "DEFAULT_WORLDS"]
