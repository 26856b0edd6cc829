"""Typed options of each stage, and their command-line flags.

Each stage has one dataclass; a field's metadata carries its help text (and optionally `flag`, `choices`,
`action`). The CLI builds its parsers from these classes, so an option is declared once and `tive run` passes
each one to the stage it concerns. Field names are the names used in provenance files.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with CLI metadata."""
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Options several stages take (one flag sets them all in `tive run`).
def _on_bad_record() -> Any:
    return opt(
        "skip",
        "a record that cannot be used (missing or broken image, a conversation the template cannot render, no answer "
        "token): mark it skipped and go on, or stop with an error (every stage)",
        choices=["skip", "error"],
    )


def _max_bad_fraction() -> Any:
    return opt(
        0.01,
        "stop anyway when more than this share of a stage's records (and more than 10) are bad, or when most of "
        "those processed so far are: a wrong image root or template must stop, not skip everything (every stage)",
    )


def _loader_workers() -> Any:
    return opt(
        None,
        "processes that encode records (images, template, tokenizer) ahead of the model (default: a quarter of the "
        "CPUs, at most 4; 0: none)",
    )


def _progress_interval() -> Any:
    return opt(30.0, "seconds between progress lines when the output is not a terminal (logs, SLURM)")


@dataclass
class PrepareOptions:
    """How to read the input and group it into tasks."""

    images: str | None = opt(None, "root folder of the images; record image paths resolve under it")
    task_field: str | None = opt(None, "record field naming each record's task (source dataset), e.g. dataset")
    task_rules: str | None = opt(
        None, "built-in rule set (llava665k) or a YAML file of ordered rules mapping image path / instruction to a task"
    )
    on_bad_record: str = _on_bad_record()
    max_bad_fraction: float = _max_bad_fraction()


@dataclass
class WarmupOptions:
    """The reference model: base model + a LoRA warm-up on a small, task-balanced sample."""

    model: str | None = opt(
        None,
        "base model (required): a Hugging Face image-text-to-text checkpoint directory (or hub id where a hub is "
        "reachable), or tiny / small: built-in random-weight models for trying the pipeline, meaningless on real data",
    )
    warmup_fraction: float = opt(0.08, "share of the ok records used for the warm-up, split equally across tasks")
    lora_rank: int | None = opt(None, "LoRA rank (default: 128 for a checkpoint as the authors; 8 for tiny)")
    lora_alpha: float | None = opt(None, "LoRA alpha (default: 2 x rank)")
    lora_targets: str = opt(
        "q_proj,k_proj,v_proj,o_proj", "comma-separated module names inside the language model that get LoRA"
    )
    learning_rate: float | None = opt(None, "warm-up learning rate (default: 2e-5 for a checkpoint as the authors; 1e-3 for tiny)")
    epochs: int | None = opt(None, "warm-up epochs (default: 1 for a checkpoint as the authors; 4 for tiny)")
    batch_size: int = opt(
        8, "warm-up batch size: records per optimiser step, whatever the number of ranks (the effective batch)"
    )
    per_device_batch_size: int | None = opt(
        None,
        "records per forward pass on one device (default: the rank's whole share of a batch); smaller values "
        "accumulate gradients over several passes, the effective batch stays --batch-size",
    )
    checkpoint_steps: int = opt(100, "save the warm-up's training state every this many steps, to resume (0: never)")
    seed: int = opt(
        0, "seed of the warm-up sample, LoRA initialisation, data order and dropout (in `tive run`: the selection too)"
    )
    device: str = opt("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = opt(
        "float32",
        "dtype of the model weights (warm-up and features); LoRA matrices, gradients and projections stay float32",
        choices=["float32", "bfloat16", "float16"],
    )
    max_length: int | None = opt(
        None,
        "cut records to this many tokens (warm-up and features), counted and reported; images are never cut "
        "(a record whose images do not fit is an error)",
    )
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass: less memory, more time (warm-up and features)",
        action="store_true",
    )
    loader_workers: int | None = _loader_workers()
    progress_interval: float = _progress_interval()
    reference_adapter: str | None = opt(
        None,
        "use this LoRA adapter directory (adapter_config.json + adapter_model.safetensors, made for --model) as "
        "the reference model instead of training one",
    )
    on_bad_record: str = _on_bad_record()
    max_bad_fraction: float = _max_bad_fraction()
    force: bool = opt(False, "redo the stage even if its outputs exist with other settings", action="store_true")


@dataclass
class FeaturesOptions:
    """Per-record gradients of the answer loss w.r.t. the LoRA parameters, projected."""

    proj_dim: int = opt(8192, "projected feature dimension (capped at the gradient size)")
    projector: str = opt(
        "sjlt", "random projection: sjlt (sparse JL, fast) or dense (Rademacher, as TRAK/LESS)", choices=["sjlt", "dense"]
    )
    proj_seed: int = opt(0, "seed of the random projection")
    grad_mode: str = opt(
        "batched",
        "per-record gradients from one backward pass per batch (batched) or one per record (loop, the reference)",
        choices=["batched", "loop"],
    )
    grad_batch_size: int | None = opt(
        None,
        "records per forward/backward pass in batched mode (default: from the device's free memory: measured on a "
        "GPU, at most 64; at most 16 on a CPU); the batch used is said and recorded per chunk",
    )
    chunk_size: int = opt(256, "records per committed chunk of features (the resume and sharding unit)")
    feature_dtype: str = opt(
        "float32", "dtype the projected features are stored in", choices=["float32", "float16"]
    )
    shard: str | None = opt(
        None,
        "I/K: compute only shard I of K (chunks c with c mod K = I), for processes started by hand; torchrun and "
        "SLURM ranks are found without it",
    )
    device: str = opt("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = opt(
        "float32",
        "dtype of the model weights; LoRA matrices, gradients and projections stay float32, norms float64",
        choices=["float32", "bfloat16", "float16"],
    )
    max_length: int | None = opt(
        None, "cut records to this many tokens, counted and reported; images are never cut"
    )
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass: less memory, more time", action="store_true"
    )
    loader_workers: int | None = _loader_workers()
    progress_interval: float = _progress_interval()
    on_bad_record: str = _on_bad_record()
    max_bad_fraction: float = _max_bad_fraction()
    force: bool = opt(False, "redo the stage even if its outputs exist with other settings", action="store_true")


@dataclass
class SelectOptions:
    """The budgeted selection."""

    budget: str = opt("0.15", "subset size: a fraction of the eligible records (0.15 or 15%%) or a count (1500)")
    seed: int = opt(0, "seed of the selection's random choices (instance sampling)")
    choose: str = opt("sample", "instance choice within a task", choices=["sample", "top"])
    temperature: float = opt(
        0.1, "sampling temperature on instance values (probability ~ exp(value / T)); the authors' q=0.001 is T=1000"
    )
    oversample: bool = opt(
        False, "let a task whose share exceeds its size repeat records (the authors' behaviour)", action="store_true"
    )
    exclude_task: list[str] = opt([], "task to leave out of the selection (repeatable)", action="append")
    authors_compat: bool = opt(
        False,
        "reproduce the authors' released selection script: budgets int()-truncated from p x all records (excluded "
        "tasks counted), oversampling, temperature 1000 (q = 0.001), task textcaps excluded (it stays in the "
        "warm-up); overrides --choose, --temperature and --oversample",
        action="store_true",
    )


@dataclass
class EstimateOptions:
    """What `tive estimate` times before it projects the whole run."""

    devices: int = opt(1, "devices the run will use (ranks of torchrun / SLURM), each as fast as this one")
    warmup_steps: int = opt(3, "warm-up steps to time (after one more that is not counted)")
    feature_batches: int = opt(3, "feature batches to time (after one more that is not counted)")


def add_options(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """Add one flag per field of `cls` to `parser`; a flag already present (e.g. --seed) is shared."""
    existing = {action.dest for action in parser._actions}
    group = parser.add_argument_group(title or cls.__name__.replace("Options", "").lower())
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in existing:
            continue
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        action = meta.get("action")
        if action == "store_true":
            kwargs["action"] = "store_true"
        elif action == "append":
            kwargs["action"] = "append"
            kwargs["default"] = None
        else:
            kwargs["type"] = _scalar_type(hints[f.name])
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if action != "append":
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            kwargs["default"] = default
            if default is not None and action != "store_true":
                kwargs["help"] += f" (default: {default})"
        group.add_argument(flag, **kwargs)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build a `cls` instance from parsed arguments (fields missing from `args` keep their defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if value is None and f.metadata.get("action") == "append":
                value = []
            values[f.name] = value
    return cls(**values)


def _scalar_type(hint: Any) -> type:
    for candidate in (int, float, str):
        if hint is candidate or candidate in getattr(hint, "__args__", ()):
            return candidate
    return str
