"""`tive warmup`: the reference model, a LoRA warm-up on a small task-balanced sample (or a given adapter)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tive.config import WarmupOptions
from tive.errors import TiveError
from tive.io import read_json, sha256_file, sha256_json, write_json
from tive.rundir import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    BASE_MODEL_DIR,
    TRAIN_LOG,
    WARMUP_DIR,
    WARMUP_MARKER,
    load_prepared,
    open_run_dir,
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

    These decide the reference model, so a finished warm-up with other settings is not reused. The device and
    gradient checkpointing change how it is computed, not what, and are recorded beside them.
    """
    check_encoding_options(options.dtype, options.max_length)
    if options.reference_adapter:
        path = Path(options.reference_adapter).expanduser().resolve()
        return {
            "model": options.model,
            "reference_adapter": str(path),
            "reference_adapter_sha256": _adapter_sha256(path),
        }
    defaults = BUILTIN_DEFAULTS.get(options.model, CHECKPOINT_DEFAULTS)
    rank = options.lora_rank or defaults["lora_rank"]
    settings = {
        "model": options.model,
        "warmup_fraction": options.warmup_fraction,
        "lora_rank": rank,
        "lora_alpha": options.lora_alpha or 2.0 * rank,
        "lora_targets": [t.strip() for t in options.lora_targets.split(",") if t.strip()],
        "modules_to_save": defaults["modules_to_save"],
        "learning_rate": options.learning_rate or defaults["learning_rate"],
        "epochs": options.epochs or defaults["epochs"],
        "batch_size": options.batch_size,
        "seed": options.seed,
        "dtype": options.dtype,
        "max_length": options.max_length,
    }
    if not 0 < settings["warmup_fraction"] <= 1:
        raise TiveError(f"--warmup-fraction {options.warmup_fraction}: must be in (0, 1]")
    for name in ("lora_rank", "epochs", "batch_size"):
        if settings[name] < 1:
            raise TiveError(f"--{name.replace('_', '-')} {settings[name]}: must be at least 1")
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
    if model in BUILTIN_DEFAULTS:
        return run_dir / BASE_MODEL_DIR
    path = Path(model).expanduser().resolve()
    if not path.is_dir():
        raise TiveError(
            f"--model {model}: no such directory; pass tiny, small or a Hugging Face checkpoint directory"
        )
    return path


def _commit_adapter(warm_dir: Path, save: Any) -> Path:
    """Write the adapter through `save(tmp_dir)` and move it into place as warm_dir/adapter."""
    adapter_dir = warm_dir / ADAPTER_DIR
    tmp_dir = warm_dir / (ADAPTER_DIR + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    save(tmp_dir)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp_dir.rename(adapter_dir)
    return adapter_dir


def run_warmup(run_dir: Path | str, options: WarmupOptions) -> dict[str, Any]:
    """Train the reference model: LoRA on a task-balanced warm-up sample; save the adapter and its log.

    With `reference_adapter`, no training: the given adapter is checked against the base model and copied in as
    the reference model.
    """
    from tive.model.loading import model_fingerprint

    run_dir = open_run_dir(run_dir)
    settings = _warmup_settings(options)
    dataset, _ = load_prepared(run_dir)
    ok = [record for record in dataset.records if record.ok]
    if not ok:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to train on")
    warm_dir = run_dir / WARMUP_DIR
    marker = warm_dir / WARMUP_MARKER
    records_sha = sha256_json([(r.index, r.task) for r in ok])
    if marker.is_file():
        old = read_json(marker)
        if old["settings"] == settings and old["records_sha256"] == records_sha:
            say(f"warmup: already done with these settings ({marker}); nothing to do")
            return old
        if not options.force:
            differing = sorted(k for k in settings.keys() | old["settings"].keys()
                               if settings.get(k) != old["settings"].get(k))
            raise TiveError(
                f"{marker}: a warm-up with other settings ({', '.join(differing) or 'records'}) exists; pass --force "
                f"to redo it (to change only the selection, e.g. its seed, run `tive select {run_dir} ...`)"
            )
        shutil.rmtree(warm_dir)

    base_dir = _base_model_dir(run_dir, options.model)
    if options.model in BUILTIN_DEFAULTS:
        from tive.model.tiny import build_tiny_model

        texts = [turn.text() for record in ok for turn in record.turns]
        build_tiny_model(base_dir, texts, seed=options.seed, preset=options.model)
    if options.reference_adapter:
        result = _use_reference_adapter(Path(settings["reference_adapter"]), base_dir, warm_dir, settings)
    else:
        result = _train_reference(base_dir, warm_dir, ok, settings, options)
    result = {
        "settings": settings,
        "model_dir": str(base_dir),
        "model_fingerprint": model_fingerprint(base_dir),
        "records_sha256": records_sha,
        **result,
    }
    write_json(marker, result)  # last: the stage's completion marker
    return result


def _use_reference_adapter(adapter: Path, base_dir: Path, warm_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Check the user's adapter against the base model and copy it in as warm_dir/adapter."""
    from tive.model.loading import ADAPTER_FILES, check_reference_adapter

    config = check_reference_adapter(adapter, base_dir)
    warm_dir.mkdir(parents=True, exist_ok=True)

    def copy(tmp_dir: Path) -> None:
        tmp_dir.mkdir()
        for name in ADAPTER_FILES:
            shutil.copyfile(adapter / name, tmp_dir / name)

    adapter_dir = _commit_adapter(warm_dir, copy)
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
        "adapter_sha256": sha,
        "lora_rank": config.get("r"),
        "lora_targets": config.get("target_modules"),
    }


def _train_reference(
    base_dir: Path, warm_dir: Path, ok: list[Any], settings: dict[str, Any], options: WarmupOptions
) -> dict[str, Any]:
    """LoRA warm-up of the base model on a task-balanced sample of `ok`; saves warm_dir/adapter."""
    from tive.model.encode import describe_truncation, encode_records
    from tive.model.loading import (
        LoraSettings,
        add_lora,
        enable_gradient_checkpointing,
        language_model_prefix,
        load_base,
        resolve_device,
    )
    from tive.model.warmup import train_warmup, warmup_sample

    device = resolve_device(options.device)
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
    positions = warmup_sample([r.task for r in ok], settings["warmup_fraction"], options.seed)
    warm_records = [ok[p] for p in positions]
    say(
        f"warmup: {len(warm_records)} records ({settings['warmup_fraction']:.0%} of {len(ok)}, equal per task), "
        f"LoRA rank {lora.rank} on {','.join(lora.targets)} in {scope}, lr {settings['learning_rate']}, "
        f"{settings['epochs']} epoch(s), {settings['dtype']}, device {device}"
        + (", gradient checkpointing" if options.gradient_checkpointing else "")
    )
    encoded = encode_records(processor, warm_records, settings["max_length"])
    if settings["max_length"]:
        lost = [warm_records[p] for p in encoded.no_answer]
        say(
            describe_truncation("warmup", len(warm_records), len(encoded.truncated), lost, settings["max_length"])
            + ("; left out of the warm-up" if lost else "")
        )
    no_answer = set(encoded.no_answer)
    items = [item for i, item in enumerate(encoded.items) if i not in no_answer]
    if not items:
        raise TiveError(
            f"--max-length {settings['max_length']}: every warm-up record lost all its answer tokens; raise it"
        )
    warm_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    losses = train_warmup(
        model,
        processor,
        items,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        seed=options.seed,
        device=device,
        log_path=warm_dir / TRAIN_LOG,
    )
    adapter_dir = _commit_adapter(warm_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
    say(f"warmup: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; adapter in {adapter_dir}")
    return {
        "warmup_indices": [record.index for record in warm_records],
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS),
        "lora_scope": scope,
        "truncated_records": len(encoded.truncated),
        "no_answer_records": [warm_records[p].index for p in encoded.no_answer],
        "seconds": round(time.perf_counter() - started, 2),
        "device": device,
        "gradient_checkpointing": options.gradient_checkpointing,
    }


