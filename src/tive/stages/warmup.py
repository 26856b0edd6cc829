"""`tive warmup`: the reference model, a LoRA warm-up on a small task-balanced sample (or a given adapter)."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from tive.badrecords import BadRecords, check_policy
from tive.config import WarmupOptions, write_run_config
from tive.errors import TiveError
from tive.io import read_json, sha256_file, sha256_json, write_json
from tive.launch import Launch, detect_launch, slurm_torch_env
from tive.rundir import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    BASE_MODEL_DIR,
    WARMUP_DIR,
    WARMUP_MARKER,
    candidate_rows,
    load_prepared,
    open_run_dir,
    read_manifest,
    stage_log,
)
from tive.stages.common import check_encoding_options, say

# Warm-up defaults: a real checkpoint follows the authors (rank 128, alpha 256, lr 2e-5, 1 epoch); the random
# built-in models need a higher learning rate, more epochs and their projector/embeddings/head trained
# (model/tiny.py). `small` uses rank 64 so that its LoRA gradient has over a million numbers.
CHECKPOINT_DEFAULTS = {"lora_rank": 128, "learning_rate": 2e-5, "epochs": 1, "modules_to_save": []}
_RANDOM_INIT_MODULES = ["multi_modal_projector", "embed_tokens", "lm_head"]
BUILTIN_DEFAULTS = {
    "tiny": {"lora_rank": 8, "learning_rate": 1e-3, "epochs": 4, "modules_to_save": _RANDOM_INIT_MODULES},
    "small": {"lora_rank": 64, "learning_rate": 1e-3, "epochs": 4, "modules_to_save": _RANDOM_INIT_MODULES},
}


def _warmup_settings(options: WarmupOptions) -> dict[str, Any]:
    """The effective warm-up settings: explicit options over the model kind's defaults.

    These decide the reference model, so a finished warm-up with other settings is not reused. The device, the
    per-device batch and gradient checkpointing change how it is computed, not what, and are recorded beside them.
    """
    from tive.model.encode import ENCODING_VERSION

    if not options.model:
        raise TiveError(
            "--model is required: a Hugging Face image-text-to-text checkpoint directory (e.g. a local copy of "
            "llava-hf/llava-1.5-7b-hf), or --model tiny to try the pipeline with a built-in random-weight model "
            "(its selection means nothing on real data)"
        )
    check_encoding_options(options.dtype, options.max_length)
    check_policy(options.on_bad_record, options.max_bad_fraction)
    if options.reference_adapter:
        path = Path(options.reference_adapter).expanduser().resolve()
        return {
            "model": options.model,
            "reference_adapter": str(path),
            "reference_adapter_sha256": _adapter_sha256(path),
            "encoding_version": ENCODING_VERSION,
        }
    defaults = BUILTIN_DEFAULTS.get(options.model, CHECKPOINT_DEFAULTS)

    def given(name: str) -> Any:
        value = getattr(options, name)
        return defaults[name] if value is None else value

    rank = given("lora_rank")
    settings = {
        "model": options.model,
        "warmup_fraction": options.warmup_fraction,
        "lora_rank": rank,
        "lora_alpha": 2.0 * rank if options.lora_alpha is None else options.lora_alpha,
        "lora_targets": [t.strip() for t in options.lora_targets.split(",") if t.strip()],
        "modules_to_save": defaults["modules_to_save"],
        "learning_rate": given("learning_rate"),
        "epochs": given("epochs"),
        "batch_size": options.batch_size,
        "seed": options.seed,
        "dtype": options.dtype,
        "max_length": options.max_length,
        "encoding_version": ENCODING_VERSION,
    }
    if not 0 < settings["warmup_fraction"] <= 1:
        raise TiveError(f"--warmup-fraction {options.warmup_fraction}: must be in (0, 1]")
    for name in ("lora_rank", "epochs", "batch_size"):
        if settings[name] < 1:
            raise TiveError(f"--{name.replace('_', '-')} {settings[name]}: must be at least 1")
    for name in ("lora_alpha", "learning_rate"):
        if not settings[name] > 0:
            raise TiveError(f"--{name.replace('_', '-')} {settings[name]}: must be positive")
    if not settings["lora_targets"]:
        raise TiveError(f"--lora-targets {options.lora_targets!r}: name at least one module, e.g. q_proj,v_proj")
    for name, least in (("per_device_batch_size", 1), ("checkpoint_steps", 0), ("loader_workers", 0)):
        value = getattr(options, name)
        if value is not None and value < least:
            raise TiveError(f"--{name.replace('_', '-')} {value}: must be at least {least}")
    return settings


def _adapter_sha256(adapter_dir: Path) -> str:
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise TiveError(
            f"--reference-adapter {adapter_dir}: no {ADAPTER_WEIGHTS} there; pass a directory saved by peft's "
            "save_pretrained (adapter_config.json + adapter_model.safetensors)"
        )
    return sha256_file(weights)


def _base_model_dir(run_dir: Path, model: str) -> Path:
    """Where the base model's checkpoint is: the built-in model's folder in the run, a local directory, or the
    local copy of a hub id (downloaded where a hub is reachable)."""
    if model in BUILTIN_DEFAULTS:
        return run_dir / BASE_MODEL_DIR
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model))
        except Exception as exc:  # offline, no such repository, no access: say so
            raise TiveError(
                f"--model {model}: no such directory, and the hub copy could not be had ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); download it where a hub is reachable and pass "
                "its directory"
            ) from exc
    raise TiveError(
        f"--model {model}: no such directory; pass a Hugging Face checkpoint directory (or hub id), or tiny / small"
    )


def _commit_adapter(warm_dir: Path, save: Any) -> Path:
    """Write the adapter through `save(tmp_dir)` and move it into place as warm_dir/adapter."""
    adapter_dir = warm_dir / ADAPTER_DIR
    tmp_dir = warm_dir / (ADAPTER_DIR + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    save(tmp_dir)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp_dir.rename(adapter_dir)
    return adapter_dir


def run_warmup(run_dir: Path | str, options: WarmupOptions, shard: str | None = None) -> dict[str, Any]:
    """Train the reference model: LoRA on a task-balanced warm-up sample; save the adapter and its log.

    With `reference_adapter`, no training: the given adapter is checked against the base model and copied in as
    the reference model. Under `torchrun` or `srun` every rank trains its share of each batch (see
    `tive.model.warmup`); rank 0 writes the outputs. Independent shards (`shard`: `tive run --shard I/K`; array
    jobs), and more ranks than `--batch-size`, are refused (`check_launch`); a finished warm-up is skipped by all.
    """
    settings = _warmup_settings(options)
    check_target_model(options.target_model)
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        result = _warmup(run_dir, options, settings, shard)
    _record_target_model(run_dir, options)
    return result


def check_target_model(target_model: str | None) -> None:
    """`--target-model` (the model the subset is for) must name a checkpoint directory, or one with its config.json."""
    if target_model and not (Path(target_model).expanduser() / "config.json").is_file():
        raise TiveError(f"--target-model {target_model}: no config.json there; pass the target's checkpoint directory "
                        "(only its config.json is read, to price one epoch of it in `tive estimate`)")


def _record_target_model(run_dir: Path, options: WarmupOptions) -> None:
    """Record the `--target-model` given now in the run's config.yaml (for the report and the estimate), also when
    a finished warm-up was reused (the target does not change the reference, so it never decides that)."""
    import yaml

    from tive.config import CONFIG_FILE

    path = run_dir / CONFIG_FILE
    recorded = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("warmup") or {}) if path.is_file() else {}
    if options.target_model and recorded.get("target_model") != options.target_model \
            and detect_launch(None).rank == 0:
        write_run_config(run_dir, warmup=options)


def _warmup(run_dir: Path, options: WarmupOptions, settings: dict[str, Any], shard: str | None) -> dict[str, Any]:
    from tive.model.loading import model_fingerprint

    rows = candidate_rows(read_manifest(run_dir))
    if not rows:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to train on")
    warm_dir = run_dir / WARMUP_DIR
    marker = warm_dir / WARMUP_MARKER
    records_sha = sha256_json([(row["index"], row["task"]) for row in rows])
    # The base model's files decide the warm-up as much as its name: a changed checkpoint is redone (--force), and
    # an interrupted warm-up never resumes its LoRA state onto other base weights (the resume key holds them too).
    # A built-in model is made from the run's records and the seed, already compared.
    base_dir = _base_model_dir(run_dir, options.model)
    builtin = options.model in BUILTIN_DEFAULTS
    settings = {**settings, "model_fingerprint": None if builtin else model_fingerprint(base_dir)}
    if marker.is_file():
        old = read_json(marker)
        before, now = _comparable(old["settings"], old), _comparable(settings)
        if before == now and old["records_sha256"] == records_sha:
            say(f"warmup: already done with these settings ({marker}); nothing to do")
            _recheck(run_dir, old, options)
            return old
        if not options.force:
            differing = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
            if "model_fingerprint" in differing:
                raise TiveError(
                    f"{marker}: the base model {base_dir} changed since the warm-up (its files differ); pass --force "
                    "to redo the warm-up on it (the features made with the old warm-up are then refused until "
                    f"recomputed with `tive features {run_dir} --force`)"
                )
            raise TiveError(
                f"{marker}: a warm-up with other settings ({', '.join(differing) or 'records'}) exists; pass --force "
                f"to redo it (to change only the selection, e.g. --select-seed, run `tive select {run_dir} ...`)"
            )
    check_launch(detect_launch(shard), settings.get("batch_size"))
    accelerator = make_accelerator(options.device)
    main = accelerator.is_main_process
    if marker.is_file() and main:
        shutil.rmtree(warm_dir)
    accelerator.wait_for_everyone()
    # Records read when used (the sample, the tiny model's texts streamed): memory flat in the dataset's size.
    dataset, _ = load_prepared(run_dir, lazy=True)
    ok = dataset.records.take([row["index"] for row in rows])
    if options.model in BUILTIN_DEFAULTS and main:
        from tive.model.tiny import build_tiny_model

        texts = (turn.text() for record in ok for turn in record.turns)
        build_tiny_model(base_dir, texts, seed=options.seed, preset=options.model)
    accelerator.wait_for_everyone()
    if options.reference_adapter:
        result = _use_reference_adapter(Path(settings["reference_adapter"]), base_dir, warm_dir, settings, main)
    else:
        result = _train_reference(base_dir, warm_dir, ok, [row["task"] for row in rows], settings, options,
                                  accelerator, dataset.path)
    result = {
        "settings": settings,
        "model_dir": str(base_dir),
        "model_fingerprint": model_fingerprint(base_dir),
        "records_sha256": records_sha,
        **result,
        # How bad records were treated: not part of what was computed (never a reason to redo it), but a rerun
        # with a lower cap re-checks the records skipped against it.
        "tolerance": {"on_bad_record": options.on_bad_record, "max_bad_fraction": options.max_bad_fraction},
    }
    if main:
        write_json(marker, result)  # last: the stage's completion marker
        write_run_config(run_dir, warmup=options)
    accelerator.wait_for_everyone()
    return result


def _comparable(settings: dict[str, Any], marker: dict[str, Any] | None = None) -> dict[str, Any]:
    """Warm-up settings as compared: the model path resolved (a replay passes it absolute), and for a marker
    written before the fingerprint was part of the settings, the fingerprint it recorded beside them."""
    compared = dict(settings)
    model = compared.get("model")
    builtin = model in BUILTIN_DEFAULTS
    if isinstance(model, str) and not builtin and Path(model).expanduser().exists():
        compared["model"] = str(Path(model).expanduser().resolve())
    if marker is not None and "model_fingerprint" not in compared:
        compared["model_fingerprint"] = None if builtin else marker.get("model_fingerprint")
    return compared


def _recheck(run_dir: Path, old: dict[str, Any], options: WarmupOptions) -> None:
    """The records a finished warm-up skipped, checked against this command's tolerances."""
    from tive.badrecords import recheck
    from tive.config import recorded_option

    skipped = old.get("skipped", {})
    first = next(iter(skipped.items()), None)
    ran_with = (old.get("tolerance") or {}).get("max_bad_fraction")
    line = recheck("warmup", len(skipped), len(old.get("warmup_indices", [])), options.on_bad_record,
                   options.max_bad_fraction,
                   ran_with if ran_with is not None else recorded_option(run_dir, "warmup", "max_bad_fraction"),
                   f"record {first[0]}: {first[1]}" if first else None,
                   hint="fix them and redo the warm-up with --force")
    if line:
        say(line)


def check_launch(launch: Launch, batch_size: int | None) -> None:
    """Refuse, before anything starts, a launch the warm-up cannot train in.

    The warm-up is one training (DDP over the ranks of one launch): independent shards (array jobs, `--shard`) run
    at different times and cannot share it. And every rank needs records of every global batch: with more ranks
    than `batch_size` (None: no training) some would have none.
    """
    if launch.kind in ("slurm-array", "shard"):
        raise TiveError(
            f"warmup: this process is {launch.describe()}, and independent shards cannot share one training; run the "
            "warm-up first in one process or one torchrun / srun launch (`tive warmup RUN ...` with the same "
            "options), then the shards (they skip a finished warm-up)"
        )
    if batch_size is not None and batch_size < launch.world:
        raise TiveError(
            f"--batch-size {batch_size}: fewer records per step than the {launch.world} ranks of this launch "
            f"({launch.kind}); pass --batch-size {launch.world} or more (at least the number of ranks), or launch "
            f"at most {batch_size} ranks"
        )


# Seconds a rank waits in one collective operation of the warm-up (torch's default for gloo; for NCCL it is 10 min):
# long enough for rank 0 to save a checkpoint while the others wait.
PROCESS_GROUP_TIMEOUT = 1800


def make_accelerator(device: str) -> Any:
    """The `accelerate.Accelerator` of this process: one process, or one rank of a torchrun / srun launch.

    `--device cpu` keeps it on the CPU (gloo between ranks); otherwise a GPU per rank where there are GPUs. Under a
    plain `srun` (SLURM's variables, not torchrun's) the torch.distributed variables are exported from SLURM's first
    (`tive.launch.slurm_torch_env`): otherwise every task would train alone and all would write the warm-up.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tive.model.loading import resolve_device

    device = resolve_device(device)
    if detect_launch().kind == "slurm" and "RANK" not in os.environ:
        os.environ.update(slurm_torch_env(os.environ))
        if device != "cpu" and torch.cuda.device_count() == 1:
            # srun --gpus-per-task 1 shows each task one GPU, device 0; accelerate picks cuda:LOCAL_RANK
            os.environ["LOCAL_RANK"] = "0"
    if detect_launch().world == 1:
        # A stage run earlier in this process (a test, `tive run`) may have used another device.
        AcceleratorState._reset_state(True)
        if device.startswith("cuda:"):
            torch.cuda.set_device(int(device.split(":", 1)[1]))
    from accelerate.utils import InitProcessGroupKwargs

    # A rank left in a collective whose peer is gone ends after this long with a clear message (`train_warmup`).
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT))
    return Accelerator(cpu=device == "cpu", kwargs_handlers=[timeout])


def _use_reference_adapter(
    adapter: Path, base_dir: Path, warm_dir: Path, settings: dict[str, Any], main: bool
) -> dict[str, Any]:
    """Check the user's adapter against the base model and copy it in as warm_dir/adapter (on rank 0)."""
    from tive.model.loading import ADAPTER_FILES, check_reference_adapter

    config = check_reference_adapter(adapter, base_dir)
    adapter_dir = warm_dir / ADAPTER_DIR
    if main:
        warm_dir.mkdir(parents=True, exist_ok=True)

        def copy(tmp_dir: Path) -> None:
            tmp_dir.mkdir()
            for name in ADAPTER_FILES:
                shutil.copyfile(adapter / name, tmp_dir / name)

        _commit_adapter(warm_dir, copy)
        sha = sha256_file(adapter_dir / ADAPTER_WEIGHTS)
        if sha != settings["reference_adapter_sha256"]:
            raise TiveError(f"--reference-adapter {adapter}: {ADAPTER_WEIGHTS} changed while it was copied; run again")
        say(
            f"warmup: no training: reference adapter {adapter} (LoRA rank {config.get('r')}, "
            f"SHA-256 {sha[:12]}) copied to {adapter_dir}"
        )
    return {
        "reference_adapter": str(adapter),
        "warmup_indices": [],
        "steps": 0,
        "loss_first": None,
        "loss_last": None,
        "adapter_sha256": settings["reference_adapter_sha256"],
        "lora_rank": config.get("r"),
        "lora_targets": config.get("target_modules"),
        "skipped": {},
    }


def _train_reference(
    base_dir: Path, warm_dir: Path, ok: Sequence[Any], tasks: list[str], settings: dict[str, Any],
    options: WarmupOptions,
    accelerator: Any, data_path: Path,
) -> dict[str, Any]:
    """LoRA warm-up of the base model on a task-balanced sample of `ok`; saves warm_dir/adapter (rank 0)."""
    from accelerate.utils import gather_object

    from tive.model.encode import Encoder
    from tive.model.loading import (
        LoraSettings,
        add_lora,
        enable_gradient_checkpointing,
        language_model_prefix,
        load_base,
    )
    from tive.model.warmup import BatchPlan, train_warmup, warmup_sample

    device = str(accelerator.device)
    world, main = accelerator.num_processes, accelerator.is_main_process
    model, processor = load_base(base_dir, device, settings["dtype"])
    scope = language_model_prefix(model)
    lora = LoraSettings(
        rank=settings["lora_rank"],
        alpha=settings["lora_alpha"],
        targets=settings["lora_targets"],
        modules_to_save=settings["modules_to_save"],
    )
    model = add_lora(model, lora, seed=options.seed)
    if options.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    encoder = Encoder(processor, settings["max_length"])
    positions = warmup_sample(tasks, settings["warmup_fraction"], options.seed)  # ok's tasks, without reading ok
    warm_records = [ok[p] for p in positions]
    plan = BatchPlan.make(settings["batch_size"], options.per_device_batch_size, world)
    if main:
        say(
            f"warmup: {len(warm_records)} records ({settings['warmup_fraction']:.0%} of {len(ok)}, equal per task), "
            f"LoRA rank {lora.rank} on {','.join(lora.targets)} in {scope}, lr {settings['learning_rate']}, "
            f"{settings['epochs']} epoch(s), {plan.describe()}, {settings['dtype']}, device {device}"
            + (", gradient checkpointing" if options.gradient_checkpointing else "")
        )
        warm_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    # One cap for the launch: every rank checks the counts summed over all ranks at each step (`train_warmup`).
    bad = BadRecords("warmup", data_path, options.on_bad_record, options.max_bad_fraction, max(1, len(warm_records)),
                     deferred=world > 1)
    started = time.perf_counter()
    losses, truncated = train_warmup(
        model,
        encoder,
        warm_records,
        epochs=settings["epochs"],
        plan=plan,
        learning_rate=settings["learning_rate"],
        seed=options.seed,
        accelerator=accelerator,
        out_dir=warm_dir,
        bad=bad,
        checkpoint_every=options.checkpoint_steps,
        resume_key=sha256_json({"settings": _comparable(settings), "records": [r.index for r in warm_records]}),
        workers=options.loader_workers,
        progress_interval=options.progress_interval,
    )
    skipped = dict(bad.reasons)
    if world > 1:
        for part in gather_object([(skipped, sorted(truncated))]):
            skipped.update(part[0])
            truncated.update(part[1])
    if not losses:
        raise TiveError(f"warmup: no warm-up record could be used ({bad.summary()})")
    adapter_dir = warm_dir / ADAPTER_DIR
    if main:
        _commit_adapter(warm_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
        say(f"warmup: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; adapter in {adapter_dir}")
        if skipped:
            say(f"warmup: {len(skipped)} of {len(warm_records)} warm-up records skipped (left out of the warm-up; "
                f"first: record {min(skipped)}: {skipped[min(skipped)]})")
        if settings["max_length"]:
            say(f"warmup: --max-length {settings['max_length']}: {len(truncated)} of {len(warm_records)} records "
                "truncated")
    accelerator.wait_for_everyone()
    return {
        "warmup_indices": [record.index for record in warm_records],
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS),
        "lora_scope": scope,
        "batch": plan.describe(),
        "encoding": encoder.describe(),
        "truncated_records": len(truncated),
        "skipped": {str(index): reason for index, reason in sorted(skipped.items())},
        "seconds": round(time.perf_counter() - started, 2),
        "device": device,
        "world": world,
        "gradient_checkpointing": options.gradient_checkpointing,
    }
