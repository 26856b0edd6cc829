"""Typed options of each stage, and their command-line flags.

Each stage has one dataclass; a field's metadata carries its help text (and optionally `flag`, `choices`,
`action`). The CLI builds its parsers from these classes, so an option is declared once and `tive run` passes
each one to the stage it concerns. Field names are the names used in provenance files.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from tive.features.projection import DEFAULT_PROJECTOR, projector_names
from tive.select import METHODS as INSTANCE_CHOICES


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


# A field whose metadata has kind=ACTION is something a command does, not something a stage computes with: never
# recorded in config.yaml, never replayed. A field with path=True may name a file or directory (recorded absolute).
ACTION = "action"


def _force() -> Any:
    return opt(False, "redo the stage even if its outputs exist with other settings", action="store_true",
               kind=ACTION)


@dataclass
class PrepareOptions:
    """How to read the input and group it into tasks."""

    images: str | None = opt(None, "root folder of the images; record image paths resolve under it", path=True)
    task_field: str | None = opt(None, "record field naming each record's task (source dataset), e.g. dataset")
    task_rules: str | None = opt(
        None, "built-in rule set (llava665k) or a YAML file of ordered rules mapping image path / instruction to a task",
        path=True,
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
        path=True,
    )
    warmup_fraction: float = opt(0.08, "share of the ok records used for the warm-up, split equally across tasks")
    target_model: str | None = opt(
        None,
        "the model the subset is for, when --model is a smaller proxy reference (a checkpoint directory, or just "
        "its config.json): used only by `tive estimate` (one epoch of it against the selection) and the report; "
        "recorded, never loaded for the selection",
        path=True,
    )
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
        0, "seed of the warm-up sample, LoRA initialisation, data order and dropout"
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
        path=True,
    )
    on_bad_record: str = _on_bad_record()
    max_bad_fraction: float = _max_bad_fraction()
    force: bool = _force()


@dataclass
class FeaturesOptions:
    """Per-record gradients of the answer loss w.r.t. the LoRA parameters, projected."""

    proj_dim: int = opt(8192, "projected feature dimension (capped at the gradient size)")
    projector: str = opt(
        DEFAULT_PROJECTOR, "random projection: sjlt (sparse JL, fast at any size) or dense (Rademacher, as "
        "TRAK/LESS: for small gradients only)", choices=list(projector_names()),
    )
    proj_seed: int = opt(0, "seed of the random projection")
    allow_slow_projection: bool = opt(
        False, "project densely even where the projection would cost more than twice the gradients (TRAK/LESS's "
        "projection; the estimate is printed)", action="store_true",
    )
    grad_mode: str = opt(
        "batched",
        "per-record gradients from one backward pass per batch (batched) or one per record (loop, the reference)",
        choices=["batched", "loop"],
    )
    layers: str = opt(
        "all",
        "which LoRA matrices the gradient features use: all, or last:K (those of the last K decoder layers only: "
        "earlier LoRA matrices get no gradient and the backward pass stops at layer L-K; cheaper, see the README's "
        "Cheaper selection)",
    )
    grad_batch_size: int | None = opt(
        None,
        "records per forward/backward pass in batched mode (default: from the device's free memory: measured on a "
        "GPU, at most 64; at most 16 on a CPU); the batch used is said and recorded per chunk",
    )
    chunk_size: int = opt(256, "records per committed chunk of features (the resume and sharding unit)")
    feature_dtype: str = opt(
        "float16",
        "dtype the projected features are stored in: float16 halves the store (665K x 8192: 11 GB, not 22) and "
        "changes no ranking measured (benchmarks/feature_dtype.py)", choices=["float16", "float32"],
    )
    shard: str | None = opt(
        None,
        "I/K: compute only shard I of K (chunks c with c mod K = I), for processes started by hand; torchrun and "
        "SLURM ranks are found without it",
    )
    wait_timeout: float = opt(
        3600.0,
        "seconds rank 0 of a torchrun / srun launch waits without a new chunk from the other ranks before it gives "
        "up and names the missing chunks (a rank that died)",
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
    force: bool = _force()
    retry_skipped: bool = opt(
        False,
        "compute again the records a complete store skipped for a reason that can change (an image that could not "
        "be read: fix or restore it first), and merge them in; the records skipped for their content are kept",
        action="store_true", kind=ACTION,
    )


@dataclass
class SelectOptions:
    """The budgeted selection."""

    budget: str = opt("0.15", "subset size: a fraction of the eligible records (0.15 or 15%%) or a count (1500)")
    select_seed: int = opt(0, "seed of the selection's random choices (instance sampling)")
    choose: str = opt(
        "sample",
        "instance choice within a task: sample (favouring high values, by --temperature), top (highest values), or "
        "diverse (beyond the paper: records that cover the task's gradient directions, near-duplicates last; "
        "among equally new records the more representative, by --temperature)",
        choices=list(INSTANCE_CHOICES),
    )
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
    token_records: int = opt(
        256, "records sampled and encoded to measure the mean tokens per record of the FLOP accounting"
    )


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
    """Build a `cls` instance from parsed arguments (fields missing from `args` keep their defaults).

    With a configuration file (`args.config_sections`, section → values), each stage takes its own section: an
    option not given on the command line (`args.given_flags`) takes the value of `cls`'s section, else its
    default; a flag given on the command line wins over every section (a shared flag such as `--dtype` sets every
    stage of `tive run`). A repeatable option given on the command line replaces the file's list.
    """
    sections = getattr(args, "config_sections", None) or {}
    section = sections.get(section_of(cls), {})
    given = getattr(args, "given_flags", None) or set()
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.name not in given and f.name in section:
            value = section[f.name]
        if isinstance(value, list):
            value = list(value)
        elif value is None and f.metadata.get("action") == "append":
            value = []
        values[f.name] = value
    return cls(**values)


def section_of(cls: type) -> str | None:
    """The configuration section that holds `cls`'s options."""
    return next((name for name, section in SECTIONS.items() if section is cls), None)


def is_action(cls: type, name: str) -> bool:
    """Whether option `name` of `cls` is an action (e.g. `force`): what a command does, never configuration."""
    return any(f.name == name and f.metadata.get("kind") == ACTION for f in dataclasses.fields(cls))


def _scalar_type(hint: Any) -> type:
    for candidate in (int, float, str):
        if hint is candidate or candidate in getattr(hint, "__args__", ()):
            return candidate
    return str


# ------------------------------------------------------------------------------------------------ config files
# The sections of a configuration file, named after the stages whose options they hold.
SECTIONS: dict[str, type] = {
    "prepare": PrepareOptions,
    "warmup": WarmupOptions,
    "features": FeaturesOptions,
    "select": SelectOptions,
    "estimate": EstimateOptions,
}
CONFIG_FILE = "config.yaml"
VERSIONED_PACKAGES = ("tive", "torch", "transformers", "peft", "accelerate", "numpy")


def package_versions() -> dict[str, str | None]:
    """The installed versions of the packages a run's numbers depend on (read from metadata, nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a configuration file: `data` (the input, for `tive run`), and one section per stage (`prepare`,
    `warmup`, `features`, `select`, `estimate`) mapping option names (as in `tive COMMAND --help`, with `_` or `-`)
    to values. `versions` (written into RUN/config.yaml) is informational. Actions (`force`, `retry_skipped`)
    are not configuration: files written before they stopped being recorded may hold them; they are left out, with
    a line in `notes` for each that was set.

    Raises:
        TiveError: the file is missing or not YAML, or names a section or option tive does not have.
    """
    import yaml

    from tive.errors import TiveError

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TiveError(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise TiveError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise TiveError(f"--config {path}: the top level must be a mapping of sections (prepare, warmup, ...)")
    out: dict[str, Any] = {}
    for key, value in content.items():
        if key in ("data", "versions"):
            out[key] = value
            continue
        if key not in SECTIONS:
            raise TiveError(f"--config {path}: unknown section {key!r}; sections are data, "
                            f"{', '.join(SECTIONS)} (and versions)")
        if not isinstance(value, dict):
            raise TiveError(f"--config {path}: section {key!r} must be a mapping of options to values")
        names = {f.name for f in dataclasses.fields(SECTIONS[key])}
        hints = get_type_hints(SECTIONS[key])
        section = {}
        for option, setting in value.items():
            name = str(option).replace("-", "_")
            if name not in names:
                raise TiveError(f"--config {path}: section {key!r} has no option {option!r}; its options are "
                                f"{', '.join(sorted(names))}")
            if is_action(SECTIONS[key], name):  # written by an older tive, which recorded actions too
                if setting:
                    out.setdefault("notes", []).append(
                        f"{path}: {key}.{name} ignored: --{name.replace('_', '-')} is an action of one command, not "
                        "a setting a configuration replays (give it on the command line)"
                    )
                continue
            if not _fits(setting, hints[name]):
                raise TiveError(f"--config {path}: {key}.{name} is {setting!r}, not a {_type_label(hints[name])}")
            section[name] = setting
        out[key] = section
    return out


def _members(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: the members of a union (`int | None`), else the hint itself."""
    import types
    import typing

    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits an option's type (an int where a float is expected does)."""
    import typing

    for kind in _members(hint):
        kind = typing.get_origin(kind) or kind
        if value is None and kind is type(None):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind in (str, bool) and isinstance(value, kind):
            return True
        if kind is list and isinstance(value, list) and all(isinstance(item, str) for item in value):
            return True
    return False


def _type_label(hint: Any) -> str:
    import typing

    names = [getattr(typing.get_origin(k) or k, "__name__", str(k)) for k in _members(hint)]
    return " or ".join("null" if name == "NoneType" else name for name in names)


def write_run_config(run_dir: Path, data: str | None = None, **options: Any) -> None:
    """Merge the given stages' resolved options (section → dataclass instance) into RUN/config.yaml, with the
    package versions: `tive run --config RUN/config.yaml --out NEW` reruns them, from any working directory.

    Actions (`force`, ...) are not recorded: a replay must not redo (and delete) what it can resume. A path option
    that names an existing file or directory is recorded absolute; hub ids and the built-in names (`tiny`,
    `small`, `llava665k`) stay as given.
    """
    import yaml

    from tive.io import write_text

    path = Path(run_dir) / CONFIG_FILE
    current = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    current = current or {}
    if data is not None:
        current["data"] = _recorded_path(str(data))
    for section, instance in options.items():
        recorded = {}
        for f in dataclasses.fields(instance):
            if f.metadata.get("kind") == ACTION:
                continue
            value = getattr(instance, f.name)
            if f.metadata.get("path") and isinstance(value, str) and value not in _literal_names(f.name):
                value = _recorded_path(value)
            recorded[f.name] = value
        current[section] = recorded
    current["versions"] = package_versions()
    ordered = {key: current[key] for key in ("data", *SECTIONS, "versions") if key in current}
    write_text(path, yaml.safe_dump(ordered, sort_keys=False))


def _literal_names(name: str) -> tuple[str, ...]:
    """The values of path option `name` that are names, not paths (the built-in models and rule sets)."""
    if name == "model":
        from tive.stages.warmup import BUILTIN_DEFAULTS

        return tuple(BUILTIN_DEFAULTS)
    if name == "task_rules":
        from tive.data.tasks import BUILTIN_RULES

        return tuple(BUILTIN_RULES)
    return ()


def _recorded_path(value: str) -> str:
    """`value` made absolute when it names an existing file or directory (else, e.g. a hub id, as given)."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def recorded_option(run_dir: Path, section: str, name: str) -> Any:
    """The value RUN/config.yaml recorded for option `name` of `section` (None when it recorded none)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    section_values = (recorded or {}).get(section)
    return section_values.get(name) if isinstance(section_values, dict) else None


def version_warnings(config: dict[str, Any]) -> list[str]:
    """One line per package whose version differs from the one the configuration recorded."""
    recorded = config.get("versions") or {}
    now = package_versions()
    return [f"{name} {recorded[name]} made this configuration, {now.get(name)} is installed: results may differ"
            for name in recorded if name in now and recorded[name] != now.get(name)]
