"""One training run of the bench: fine-tune a fresh copy of the base model on a subset, evaluate every benchmark.

Runs in a worker process (or in the calling process with one worker). A worker loads the base model and the
pre-encoded records once (`init`), then serves jobs; each job is independent and seeded, so the result of a
job does not depend on which worker ran it or in what order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

_STATE: dict[str, Any] = {}


def init(cache_path: str, base_dir: str, threads: int) -> None:
    """Load the base model and the encoded training items and prompts (once per worker)."""
    import torch

    from tive.bench.slots import register
    from tive.model.loading import load_base

    register()  # a slot base loads through the product's loader once its classes are registered
    torch.set_num_threads(max(1, threads))
    model, processor = load_base(Path(base_dir))
    data = torch.load(cache_path, weights_only=False)
    _STATE.update(model=model, processor=processor, items=data["items"], benchmarks=data["benchmarks"])


def evaluate(model: Any, processor: Any, benchmarks: list[dict[str, Any]],
             logliks: dict[str, float] | None = None) -> dict[str, float]:
    """Accuracy (%) on each benchmark: greedy answers, and for `cloze` records the option with the highest summed
    log-likelihood (`answer_logliks`). Fills `logliks` (when given) with each benchmark's mean per-answer
    log-likelihood of the reference answer (its tokens and the end-of-turn token): a lower-noise diagnostic."""
    from tive.bench.metrics import score
    from tive.bench.model import answer_logliks, generate

    scores = {}
    for bench in benchmarks:
        n = len(bench["prompts"])
        options = bench.get("options") or [None] * n
        greedy = [i for i in range(n) if options[i] is None]
        answers: list[str] = [""] * n
        for i, answer in zip(greedy, generate(model, processor, [bench["prompts"][i] for i in greedy])
                             if greedy else []):
            answers[i] = answer
        pairs = [(i, ids) for i, ids in enumerate(bench["reference_ids"])] if "reference_ids" in bench else []
        cloze = [(i, k) for i in range(n) if options[i] is not None for k in range(len(options[i]))]
        values = answer_logliks(model, processor, bench["prompts"],
                                pairs + [(i, options[i][k]) for i, k in cloze]) if pairs or cloze else []
        best: dict[int, tuple[float, int]] = {}
        for (i, k), value in zip(cloze, values[len(pairs):]):
            if i not in best or value > best[i][0]:
                best[i] = (value, k)
        for i, (_, k) in best.items():
            answers[i] = bench["option_texts"][i][k]
        correct = sum(score(m, a, r) for m, a, r in zip(bench["metrics"], answers, bench["references"]))
        scores[bench["name"]] = 100.0 * correct / n
        if logliks is not None and pairs:
            logliks[bench["name"]] = sum(values[: len(pairs)]) / len(pairs)
    return scores


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune on job['positions'] for job['steps'] steps with job['recipe'] and job['seed']; evaluate; return
    scores and timings."""
    import torch

    from tive.bench.model import fresh_copy, train_model

    model = fresh_copy(_STATE["model"])
    items = [_STATE["items"][int(p)] for p in job["positions"]]
    from tive.bench.model import Recipe

    recipe = Recipe(**job["recipe"])
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job["seed"])
        losses = train_model(model, _STATE["processor"], items, steps=int(job["steps"]),
                             batch_size=recipe.batch_size, learning_rate=recipe.learning_rate, seed=job["seed"],
                             freeze_vision=recipe.freeze_vision)
    trained = time.perf_counter()
    logliks: dict[str, float] = {}
    scores = evaluate(model, _STATE["processor"], _STATE["benchmarks"], logliks)
    done = time.perf_counter()
    return {
        "method": job["method"],
        "budget": job["budget"],
        "recipe": job["recipe_name"],
        "seed": job["seed"],
        "records": len(items),
        "steps": len(losses),
        "loss_last": float(sum(losses[-10:]) / len(losses[-10:])),
        "scores": scores,
        "logliks": logliks,
        "average": sum(scores.values()) / len(scores),
        "train_seconds": round(trained - started, 2),
        "eval_seconds": round(done - trained, 2),
        "key": job["key"],
    }
