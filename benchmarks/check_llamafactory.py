"""Check `tive export --for llama-factory` against LLaMA-Factory itself (llamafactory 0.9.5, in its own venv).

Run by `benchmarks/check_llamafactory.sh`, which builds a run with tive (demo data, the built-in tiny LLaVA model,
a random baseline, the export) and then calls this script with LLaMA-Factory's venv's Python:

    .venv-llamafactory/bin/python benchmarks/check_llamafactory.py RUN

For the subset and each baseline it
1. reads the exported training YAML the way `llamafactory-cli train FILE.yaml key=value ...` does
   (`llamafactory.hparams.parser.read_args`), with CPU overrides: float32 instead of bf16, 2 steps, batch 2, no
   preprocessing workers, output in RUN/llamafactory_check/NAME;
2. loads the dataset with LLaMA-Factory's own loader (`get_train_args`, `load_tokenizer`,
   `get_template_and_fix_tokenizer`, `get_dataset`) and checks that every record of the exported file arrived,
   with its image;
3. trains two steps (`llamafactory.train.tuner.run_exp`) on the tiny local LLaVA checkpoint the run saved
   (`RUN/base_model`, built from config objects and saved with `save_pretrained`).
Every step's outcome, or the exact error that stopped it (its traceback), goes to RUN/llamafactory_check.json;
the exit status is 0 only when every step of every dataset passed.
"""

from __future__ import annotations

import json
import sys
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any


def cpu_overrides(run_dir: Path, name: str) -> list[str]:
    """`key=value` overrides for a two-step CPU run (what a user would add on the llamafactory-cli line)."""
    return [
        "bf16=false", "max_steps=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
        "preprocessing_num_workers=null", "save_strategy='no'", "logging_steps=1", "report_to=none",
        "overwrite_output_dir=true", "use_cpu=true", f"output_dir={run_dir / 'llamafactory_check' / name}",
    ]


def read_yaml_as_cli(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The arguments `llamafactory-cli train PATH OVERRIDES...` would parse (LLaMA-Factory's read_args)."""
    from llamafactory.hparams.parser import read_args

    saved = sys.argv
    sys.argv = ["llamafactory-cli", str(path), *overrides]
    try:
        return read_args()
    finally:
        sys.argv = saved


def load_with_llamafactory(args: dict[str, Any]) -> dict[str, Any]:
    """Load the dataset the arguments name with LLaMA-Factory's loader; return what arrived."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(dict(args))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    train = module["train_dataset"]
    images = [row.get("images") for row in train]
    return {"rows": len(train), "columns": list(train.column_names),
            "rows_with_images": sum(1 for value in images if value),
            "first_labels_trained": int(sum(1 for t in train[0]["labels"] if t != -100))}


def main(run_dir: Path) -> int:
    exports = run_dir / "export" / "llama-factory"
    info = json.loads((exports / "dataset_info.json").read_text())
    report: dict[str, Any] = {
        "versions": {p: version(p) for p in ("llamafactory", "torch", "torchaudio", "transformers",
                                             "peft", "accelerate", "datasets")},
        "datasets": {},
    }
    ok = True
    for key, entry in info.items():
        name = key.removeprefix("tive_")
        records = json.loads(Path(entry["file_name"]).read_text())
        result: dict[str, Any] = {"file": entry["file_name"], "records": len(records),
                                  "records_with_images": sum(1 for r in records if r.get("image"))}
        report["datasets"][name] = result
        try:
            args = read_yaml_as_cli(exports / f"train_{name}.yaml", cpu_overrides(run_dir, name))
            result["args"] = args
            loaded = load_with_llamafactory(args)
            result["loaded"] = loaded
            result["load_ok"] = (loaded["rows"] == result["records"]
                                 and loaded["rows_with_images"] == result["records_with_images"])
            ok &= result["load_ok"]
        except Exception:  # noqa: BLE001 - the exact error is the result
            result["load_error"] = traceback.format_exc()
            ok = False
            continue
        try:
            from llamafactory.train.tuner import run_exp

            run_exp(dict(args))
            state = run_dir / "llamafactory_check" / name / "trainer_state.json"
            log = json.loads(state.read_text()) if state.is_file() else {}
            result["train"] = {"global_step": log.get("global_step"),
                               "losses": [e["loss"] for e in log.get("log_history", []) if "loss" in e]}
            result["train_ok"] = log.get("global_step") == 2
            ok &= result["train_ok"]
        except Exception:  # noqa: BLE001 - the exact error is the result
            result["train_error"] = traceback.format_exc()
            ok = False
    report["ok"] = ok
    out = run_dir / "llamafactory_check.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, result in report["datasets"].items():
        print(f"{name}: {result['records']} records; loaded: {result.get('loaded')}; train: {result.get('train')}"
              + ("; LOAD ERROR: " + result["load_error"].strip().splitlines()[-1] if "load_error" in result else "")
              + ("; TRAIN ERROR: " + result["train_error"].strip().splitlines()[-1] if "train_error" in result
                 else ""))
    print(f"{'ok' if ok else 'FAILED'}: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
