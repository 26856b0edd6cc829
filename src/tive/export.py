"""`tive export`: the subset and its baselines as the trainers and evaluators people use take them.

- `--for llama-factory` writes `RUN/export/llama-factory/dataset_info.json` (one entry per dataset: the whole
  input as `full`, the subset and each baseline, by absolute path, with the `formatting`, `columns` and `tags`
  LLaMA-Factory's own loader reads — `llamafactory.data.parser.DatasetAttr`, 0.9.5) and one training YAML per dataset (`train_NAME.yaml`:
  `dataset_dir` is that folder, `media_dir` the absolute image folder, the hyperparameters of LLaVA-1.5's
  `finetune.sh`: one epoch, lr 2e-5, cosine, 3% warm-up, 2,048 tokens, vision tower frozen).
- `--for llava` writes `RUN/export/llava/NAME.args`: the arguments of LLaVA's `scripts/v1_5/finetune*.sh` that
  change (`--data_path`, `--image_folder`, `--output_dir`). LLaVA's `train.py` reads `--data_path` with
  `json.load` and opens one `image` per record under `--image_folder`, so only LLaVA-format JSON lists with at
  most one image per record are exported; anything else is refused with the reason.
- Both write `RUN/export/lmms_eval.sh`: lmms-eval on the paper's benchmarks (`tive.compare.BENCHMARKS`) for the
  model trained on each dataset, results under `RUN/eval/NAME`, which `tive compare` reads.

The records are checked as LLaMA-Factory will read them: one record shape per file (one dataset_info entry
describes one layout), as many `<image>` placeholders as images (its multimodal plugin refuses a mismatch at
training time), string message contents. The exported files are the input, subset and baseline files themselves;
nothing is copied or rewritten.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from tive.baseline import read_baselines
from tive.errors import TiveError
from tive.io import read_json, write_json, write_text
from tive.rundir import PREPARE_FILE, TASKS_FILE, open_run_dir, prepared_input, read_manifest, stage_log
from tive.stages.common import say

EXPORT_DIR = "export"
EVAL_DIR = "eval"
TRAIN_DIR = "train"
TARGETS: tuple[str, ...] = ("llama-factory", "llava")
IMAGE_PLACEHOLDER = "<image>"

# LLaMA-Factory's template for each Hugging Face `model_type` it has one for (llamafactory/data/template.py).
LLAMA_FACTORY_TEMPLATES = {
    "llava": "llava",
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
}
# lmms-eval's model class for each `model_type` (lmms_eval/models/__init__.py); trained by LLaMA-Factory, the
# checkpoint keeps its Hugging Face architecture.
LMMS_EVAL_MODELS = {"llava": "llava_hf", "llava_next": "llava_hf", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}

# LLaVA-1.5's finetune.sh settings, carried into the LLaMA-Factory YAML (per-device batch 16 on 8 GPUs = 128).
LLAVA15_TRAINING: dict[str, Any] = {
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2.0e-5,
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "bf16": True,
    "logging_steps": 1,
    "save_steps": 50000,
    "report_to": "none",
}


def datasets_of(run_dir: Path) -> dict[str, Path]:
    """The run's trainable datasets by name: `full` (the input itself, checked unchanged since prepare: the model
    the others are compared with), `subset`, then each baseline (in baselines.json order)."""
    if not (run_dir / TASKS_FILE).is_file():
        raise TiveError(f"{run_dir}: no selection yet; run `tive select {run_dir}` (or `tive run`) first")
    subset = next((p for p in sorted(run_dir.glob("subset*")) if p.name.startswith("subset")), None)
    if subset is None:
        raise TiveError(f"{run_dir}: no subset file (a run on bring-your-own features writes none); nothing to "
                        "export")
    data, info = prepared_input(run_dir)
    found = {"full": data.resolve(), "subset": subset}
    size = sum(int(row.get("selected") or 0) for row in read_manifest(run_dir))
    for name, entry in read_baselines(run_dir).items():
        if entry["subset_records"] != size:
            raise TiveError(f"{run_dir / 'baselines.json'}: baseline {name} was made for a {entry['subset_records']}-"
                            f"record subset; the subset now has {size}. Run `tive baseline {run_dir} --method "
                            f"{entry['method']} --seed {entry['seed']}` again, so that both train on as many records")
        path = run_dir / entry["file"]
        if not path.exists():
            raise TiveError(f"{path}: listed in {run_dir / 'baselines.json'} but missing; run `tive baseline "
                            f"{run_dir} --method {entry['method']} --seed {entry['seed']}` again")
        found[name] = path
    return found


def _records(path: Path) -> list[Any]:
    """The records of one exported file, parsed by tive's readers (each with its shape)."""
    from tive.data import load_dataset

    return load_dataset(path).records


def check_placeholders(path: Path, records: list[Any]) -> None:
    """Refuse a record whose `<image>` placeholders do not match its images, as LLaMA-Factory's plugin would.

    tive places images without a placeholder before the first question (as LLaVA does); LLaMA-Factory instead
    refuses the record at training time ("The number of images does not match the number of <image> tokens").
    """
    for record in records:
        written = sum(str(value).count(IMAGE_PLACEHOLDER) for value in _raw_strings(record.raw))
        if record.images and written != len(record.images):
            raise TiveError(
                f"{path}: record {record.index} (id {record.record_id!r}), field 'image'/'images': "
                f"{len(record.images)} image(s) but {written} {IMAGE_PLACEHOLDER} placeholder(s); LLaMA-Factory "
                f"refuses such a record when it trains. Put one {IMAGE_PLACEHOLDER} per image in the input where "
                "the image belongs, prepare and select again")


def _raw_strings(value: Any) -> list[str]:
    """Every string in a record's conversation fields (not its image or id fields)."""
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("image", "images", "id"):
                continue
            out.extend(_raw_strings(item))
    elif isinstance(value, list):
        for item in value:
            out.extend(_raw_strings(item))
    elif isinstance(value, str):
        out.append(value)
    return out


def llama_factory_entry(path: Path, records: list[Any]) -> dict[str, Any]:
    """The dataset_info.json entry that makes LLaMA-Factory's loader read `path` (its records' one shape).

    Raises:
        TiveError: mixed shapes, OpenAI-style content parts, or two image fields.
    """
    from tive.data.records import SHAPE_INSTRUCTION, SHAPE_LLAVA, SHAPE_OPENAI, SHAPE_SHAREGPT

    shapes = Counter(record.shape for record in records)
    if len(shapes) > 1:
        described = ", ".join(f"{count} {shape}" for shape, count in sorted(shapes.items()))
        raise TiveError(f"{path}: records of several shapes ({described}); one LLaMA-Factory dataset_info entry "
                        "describes one layout. Split the input by shape and run tive on each")
    shape = next(iter(shapes)) if shapes else SHAPE_LLAVA
    if shape == SHAPE_OPENAI:
        first = records[0]
        raise TiveError(f"{path}: record {first.index} (id {first.record_id!r}), field 'messages': OpenAI-style "
                        "content parts (lists of text/image_url parts); LLaMA-Factory's sharegpt and openai "
                        "converters read string contents with <image> placeholders. Convert the records to "
                        "messages with string content and an `images` list, then run tive on them")
    keys = Counter(key for record in records for key in record.raw)

    def column(name: str) -> str | None:
        """`name` when any record has the field, else None. A record without it reads as null (the `datasets`
        JSON loader fills absent keys with null), which LLaMA-Factory's converters take as empty."""
        return name if keys[name] else None

    def images_column(*names: str) -> str | None:
        present = [name for name in names if keys[name]]
        if len(present) > 1:
            raise TiveError(f"{path}: records use both {present[0]!r} and {present[1]!r} for images; LLaMA-Factory "
                            "reads one images column per dataset")
        # A record without images may lack the field: the JSON loader fills it with null, an image-less record.
        return present[0] if present else None

    entry: dict[str, Any] = {"file_name": str(path.resolve())}
    if shape == SHAPE_LLAVA:
        columns = {"messages": "conversations", "images": images_column("image", "images"),
                   "system": column("system_prompt")}
        entry.update(formatting="sharegpt", columns={k: v for k, v in columns.items() if v},
                     tags={"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                           "system_tag": "system"})
    elif shape == SHAPE_SHAREGPT:
        columns = {"messages": "messages", "images": images_column("images", "image"), "system": column("system")}
        entry.update(formatting="sharegpt", columns={k: v for k, v in columns.items() if v},
                     tags={"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant", "system_tag": "system"})
    elif shape == SHAPE_INSTRUCTION:
        # Absent columns are null: LLaMA-Factory's alpaca defaults name `input`, which would be looked up.
        entry.update(formatting="alpaca", columns={
            "prompt": "instruction", "query": column("input"), "response": "output", "history": column("history"),
            "system": column("system"), "images": images_column("images", "image")})
    else:
        raise TiveError(f"{path}: records of shape {shape!r} have no LLaMA-Factory layout here")
    return entry


def _model_type(model: str | None) -> str | None:
    """The `model_type` of a checkpoint directory's config.json (None when it is not a local checkpoint)."""
    if model and (Path(model) / "config.json").is_file():
        return read_json(Path(model) / "config.json").get("model_type")
    return None


def _default_model(run_dir: Path) -> str | None:
    """The model the subset is for: the warm-up's `--target-model` where a proxy reference selected, else its
    `--model` (the saved built-in model for tiny / small)."""
    from tive.rundir import BASE_MODEL_DIR

    config = run_dir / "config.yaml"
    model = None
    if config.is_file():
        import yaml

        warmup = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("warmup") or {}
        model = warmup.get("target_model") or warmup.get("model")
    if model in ("tiny", "small") and (run_dir / BASE_MODEL_DIR).is_dir():
        return str((run_dir / BASE_MODEL_DIR).resolve())
    return model


def _yaml_scalar(value: Any) -> str:
    """A scalar as YAML 1.1 (PyYAML, OmegaConf) reads it back: JSON, with a float's mantissa always dotted
    (`2e-05` is a string to YAML 1.1; `2.0e-05` is a float)."""
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text.split("e")[0]:
        text = text.replace("e", ".0e", 1)
    return text


def _yaml(values: dict[str, Any]) -> str:
    """A flat YAML mapping, one key a line, values as JSON scalars (valid YAML, readable by LLaMA-Factory)."""
    return "".join(f"{key}: {_yaml_scalar(value)}\n" for key, value in values.items())


def export_llama_factory(run_dir: Path, datasets: dict[str, Path], images: str | None, model: str | None,
                         template: str | None, finetuning_type: str, out: Path) -> dict[str, Path]:
    """Write dataset_info.json and a training YAML per dataset; return the YAMLs by dataset name."""
    model_type = _model_type(model)
    template = template or LLAMA_FACTORY_TEMPLATES.get(model_type or "")
    if template is None:
        raise TiveError(f"--model {model}: " + (f"model_type {model_type!r} has no LLaMA-Factory template known to "
                                                "tive" if model_type else "not a local checkpoint directory")
                        + "; give --template NAME (LLaMA-Factory's template for the model, e.g. llava, qwen2_vl)")
    info: dict[str, Any] = {}
    for name, path in datasets.items():
        records = _records(path)
        entry = llama_factory_entry(path, records)
        if entry.get("columns", {}).get("images"):
            check_placeholders(path, records)
        info[f"tive_{name}"] = entry
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset_info.json", info)
    yamls = {}
    for name in datasets:
        values: dict[str, Any] = {
            "model_name_or_path": model or "MODEL",
            "trust_remote_code": True,
            "stage": "sft",
            "do_train": True,
            "finetuning_type": finetuning_type,
            "freeze_vision_tower": True,
            "freeze_multi_modal_projector": False,
        }
        if finetuning_type == "lora":
            values.update(lora_rank=128, lora_alpha=256, lora_target="all", learning_rate=2.0e-4)
        values.update(
            dataset=f"tive_{name}",
            dataset_dir=str(out.resolve()),
            template=template,
            cutoff_len=2048,
            preprocessing_num_workers=16,
            output_dir=str((run_dir / TRAIN_DIR / name).resolve()),
        )
        if images:
            values["media_dir"] = str(Path(images).resolve())
        values.update({k: v for k, v in LLAVA15_TRAINING.items() if not (k == "learning_rate" and
                                                                         finetuning_type == "lora")})
        path = out / f"train_{name}.yaml"
        write_text(path, f"# tive export --for llama-factory: {name} ({datasets[name].name}); "
                         f"train with `llamafactory-cli train {path.resolve()}`\n" + _yaml(values))
        yamls[name] = path
    return yamls


def export_llava(run_dir: Path, datasets: dict[str, Path], fmt: str, images: str | None, out: Path) -> dict[str, Path]:
    """Write `NAME.args` (LLaVA finetune*.sh's --data_path, --image_folder, --output_dir) per dataset."""
    from tive.data.formats import FORMAT_JSON
    from tive.data.records import SHAPE_LLAVA

    if fmt != FORMAT_JSON:
        raise TiveError(f"{datasets['subset']}: the input is {fmt}; LLaVA's train.py reads --data_path with "
                        "json.load, so only a JSON list of LLaVA-format records can be exported --for llava "
                        "(use --for llama-factory, which reads JSON lines, Parquet and the other shapes)")
    for name, path in datasets.items():
        for record in _records(path):
            if record.shape != SHAPE_LLAVA:
                raise TiveError(f"{path}: record {record.index} (id {record.record_id!r}) is a {record.shape} "
                                "record; LLaVA's train.py reads LLaVA-format records (conversations of "
                                "from/value, one image). Use --for llama-factory")
            image = record.raw.get("image")
            if isinstance(image, list):
                raise TiveError(f"{path}: record {record.index} (id {record.record_id!r}), field 'image': a list "
                                "of images; LLaVA-1.5's train.py opens one image per record. Use --for "
                                "llama-factory")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, path in datasets.items():
        args = [("--data_path", str(path.resolve())), ("--image_folder", str(Path(images).resolve()) if images
                                                        else "IMAGE_FOLDER"),
                ("--output_dir", str((run_dir / TRAIN_DIR / f"llava-{name}").resolve()))]
        text = (f"# tive export --for llava: {name}. In LLaVA's scripts/v1_5/finetune.sh (or finetune_lora.sh, "
                "finetune_task*.sh) replace these arguments, keep the others\n"
                + " \\\n".join(f"    {flag} {shlex.quote(value)}" for flag, value in args) + "\n")
        written[name] = out / f"{name}.args"
        write_text(written[name], text)
    return written


def lmms_eval_script(run_dir: Path, models: dict[str, str], model_class: str) -> str:
    """The lmms-eval commands for the paper's benchmarks, one per trained model, results under RUN/eval/NAME."""
    from tive.compare import lmms_eval_tasks

    lines = ["#!/usr/bin/env bash",
             "# tive export: lmms-eval (0.7.3) on the paper's benchmarks for the model trained on each dataset",
             "# (`full`: on the whole input, the model tive compare reports % of).",
             "# LLaVA-Bench and MM-Vet are scored by a GPT judge (OPENAI_API_KEY); MMBench uses it to match free-form "
             "answers. Several GPUs: accelerate launch --num_processes N -m lmms_eval ...",
             "set -euo pipefail"]
    for name, model in models.items():
        lines.append(f"python -m lmms_eval --model {model_class} --model_args pretrained={shlex.quote(model)} "
                     f"--tasks {lmms_eval_tasks()} --batch_size 1 "
                     f"--output_path {shlex.quote(str((run_dir / EVAL_DIR / name).resolve()))}")
    names = " ".join(shlex.quote(str((run_dir / EVAL_DIR / name).resolve())) for name in models)
    lines.append(f"# then: tive compare {names}")
    return "\n".join(lines) + "\n"


def run_export(run_dir: Path | str, target: str, model: str | None = None, template: str | None = None,
               finetuning_type: str = "full", out: str | None = None) -> dict[str, Path]:
    """`tive export RUN --for TARGET`: write the trainer's files and the lmms-eval script; return the files."""
    if target not in TARGETS:
        raise TiveError(f"--for {target}: unknown; choose one of {', '.join(TARGETS)}")
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        if not (run_dir / PREPARE_FILE).is_file():
            raise TiveError(f"{run_dir}: no prepare.json; export needs a run made by `tive prepare` / `tive run`")
        info = read_json(run_dir / PREPARE_FILE)
        images = info.get("images")
        datasets = datasets_of(run_dir)
        root = Path(out) if out else run_dir / EXPORT_DIR
        model = model or _default_model(run_dir)
        if target == "llama-factory":
            if info["format"] == "hf_dataset":
                raise TiveError(f"{datasets['subset']}: a `datasets` save_to_disk directory; LLaMA-Factory's file "
                                "loader reads files (json, jsonl, parquet, arrow), and this directory also holds "
                                "state.json and dataset_info.json. Save the input as Parquet "
                                "(datasets.load_from_disk(DIR).to_parquet(FILE)) and run tive on that")
            files = export_llama_factory(run_dir, datasets, images, model, template, finetuning_type,
                                         root / "llama-factory")
            trained = {name: str((run_dir / TRAIN_DIR / name).resolve()) for name in datasets}
            model_class = LMMS_EVAL_MODELS.get(_model_type(model) or "", "llava_hf")
        else:
            files = export_llava(run_dir, datasets, info["format"], images, root / "llava")
            trained = {name: str((run_dir / TRAIN_DIR / f"llava-{name}").resolve()) for name in datasets}
            model_class = "llava"
        script = root / "lmms_eval.sh"
        write_text(script, lmms_eval_script(run_dir, trained, model_class))
        script.chmod(0o755)
        for name, path in files.items():
            say(f"export --for {target}: {name} ({datasets[name]}) -> {path}")
        say(f"export: evaluate each trained model with lmms-eval: {script}; then `tive compare` the results")
        if not images:
            say("export: warning: the run was prepared without --images; the image folder is left as "
                "IMAGE_FOLDER / LLaMA-Factory's default (dataset_dir): set it before training")
    return {**files, "lmms_eval": script}
