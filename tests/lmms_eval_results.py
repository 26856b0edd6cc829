"""Result files shaped exactly like lmms-eval 0.7.3's writer's, for `tive compare`'s tests.

lmms-eval is not a test dependency (it pulls a large stack), so this module reproduces its writer's layout from its
code (lmms-eval 0.7.3, read from the wheel):
- `evaluator_utils.consolidate_results`: `results[task]` = `{"alias": task, "METRIC,FILTER": value, "samples": n,
  "METRIC_stderr,FILTER": stderr or "N/A", "METRIC_stderr_clt,FILTER": ..., "METRIC_stderr_clustered,FILTER": ...}`
  per metric, in the task's metric order; the filter is `none` for these tasks;
- `evaluator.evaluate`: `{"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
  "n-samples"}`, then `simple_evaluate` adds `config`, `git_hash`, `git_branch`, `lmms_eval_version`, `date`,
  `usage`;
- `EvaluationTracker.save_results_aggregated`: adds `task_hashes` and `GeneralConfigTracker`'s fields, dumps with
  `json.dumps(indent=2, ensure_ascii=False)` to `OUTPUT_PATH/MODEL_NAME_SANITIZED/DATE_results.json`, where the
  model name is the `pretrained=` value and the sanitized name its last two path parts joined by `__`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# The metric lists of the tasks' YAML files (lmms_eval/tasks/*/*.yaml, 0.7.3), in their order, with whether the
# aggregation is a mean (a stderr is then computed) or a task function (stderr "N/A").
TASK_METRICS: dict[str, list[tuple[str, bool]]] = {
    "vqav2_val": [("exact_match", True)],
    "gqa": [("exact_match", True)],
    "vizwiz_vqa_val": [("exact_match", True)],
    "scienceqa_img": [("exact_match", True)],
    "textvqa_val": [("exact_match", True)],
    "pope": [("pope_accuracy", False), ("pope_precision", False), ("pope_recall", False),
             ("pope_f1_score", False), ("pope_yes_ratio", False)],
    "mme": [("mme_perception_score", False), ("mme_cognition_score", False)],
    "mmbench_en_dev": [("gpt_eval_score", False)],
    "mmbench_cn_dev": [("gpt_eval_score", False)],
    "seedbench": [("seed_image", False), ("seed_video", False), ("seed_all", False)],
    "llava_in_the_wild": [("gpt_eval_llava_all", False), ("gpt_eval_llava_conv", False),
                          ("gpt_eval_llava_detail", False), ("gpt_eval_llava_complex", False)],
    "mmvet": [("gpt_eval_score", False)],
}


def sanitize_model_name(model_name: str) -> str:
    """lmms_eval.utils.sanitize_model_name (full_path=False)."""
    parts = model_name.split("/")
    last_two = "/".join(parts[-2:]) if len(parts) > 1 else parts[-1]
    return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", last_two)


def write_lmms_eval_results(output_path: Path, pretrained: str, scores: dict[str, dict[str, float]],
                            date: str = "20261207_010203", samples: int = 100) -> Path:
    """Write `scores` (task -> metric -> value) as lmms-eval 0.7.3 would after
    `python -m lmms_eval --model llava_hf --model_args pretrained=PRETRAINED --tasks ... --output_path OUTPUT_PATH`.
    """
    results: dict[str, dict[str, Any]] = {}
    for task, metrics in scores.items():
        entry: dict[str, Any] = {"alias": task}
        for metric, is_mean in TASK_METRICS.get(task, [(name, True) for name in metrics]):
            if metric not in metrics:
                continue
            entry[f"{metric},none"] = metrics[metric]
            entry["samples"] = samples
            entry[f"{metric}_stderr,none"] = 0.01 if is_mean else "N/A"
            entry[f"{metric}_stderr_clt,none"] = 0.01 if is_mean else "N/A"
            entry[f"{metric}_stderr_clustered,none"] = "N/A"
        results[task] = entry
    model_args = f"pretrained={pretrained}"
    data: dict[str, Any] = {
        "results": results,
        "group_subtasks": {task: [] for task in reversed(list(scores))},
        "configs": {task: {"task": task, "output_type": "generate_until"} for task in sorted(scores)},
        "versions": {task: "Yaml" for task in sorted(scores)},
        "n-shot": {task: 0 for task in sorted(scores)},
        "higher_is_better": {task: {metric: True for metric, _ in TASK_METRICS.get(task, [])}
                             for task in sorted(scores)},
        "n-samples": {task: {"original": samples, "effective": samples} for task in scores},
        "config": {"model": "llava_hf", "model_args": model_args, "batch_size": "1", "batch_sizes": [],
                   "device": None, "use_cache": None, "limit": None, "offset": 0, "bootstrap_iters": 100000,
                   "process_docs_parallel": False, "gen_kwargs": "", "random_seed": 0, "numpy_seed": 1234,
                   "torch_seed": 1234, "fewshot_seed": 1234},
        "git_hash": None,
        "git_branch": None,
        "lmms_eval_version": "0.7.3",
        "date": date,
        "usage": {},
        "task_hashes": {},
        "model_source": "llava_hf",
        "model_name": pretrained,
        "model_name_sanitized": sanitize_model_name(pretrained),
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": False,
        "chat_template": None,
        "chat_template_sha": None,
        "start_time": 1.0,
        "end_time": 2.0,
        "total_evaluation_time_seconds": "1.0",
    }
    folder = Path(output_path) / sanitize_model_name(pretrained)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{date.replace(':', '-')}_results.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def paper_scores(shift: float = 0.0) -> dict[str, dict[str, float]]:
    """Scores for every benchmark of the paper's list, on the scales lmms-eval reports (LLaVA-1.5-7B-like), each
    fraction moved by `shift` (and the 0–100 ones by 100 × shift)."""
    return {
        "vqav2_val": {"exact_match": 0.785 + shift},
        "gqa": {"exact_match": 0.62 + shift},
        "vizwiz_vqa_val": {"exact_match": 0.50 + shift},
        "scienceqa_img": {"exact_match": 0.695 + shift},
        "textvqa_val": {"exact_match": 0.582 + shift},
        "pope": {"pope_accuracy": 0.86, "pope_precision": 0.87, "pope_recall": 0.84,
                 "pope_f1_score": 0.859 + shift, "pope_yes_ratio": 0.48},
        "mme": {"mme_perception_score": 1510.7 + 1000 * shift, "mme_cognition_score": 355.7},
        "mmbench_en_dev": {"gpt_eval_score": 64.3 + 100 * shift},
        "mmbench_cn_dev": {"gpt_eval_score": 58.3 + 100 * shift},
        "seedbench": {"seed_image": 0.661 + shift, "seed_video": 0.37, "seed_all": 0.58},
        "llava_in_the_wild": {"gpt_eval_llava_all": 65.4, "gpt_eval_llava_conv": 60.0,
                              "gpt_eval_llava_detail": 50.0, "gpt_eval_llava_complex": 75.0},
        "mmvet": {"gpt_eval_score": 31.1},
    }
