"""The pipeline's stages. Each reads earlier artefacts from the run directory and commits its own.

A stage never knows how it was launched; the CLI, the demo and the tests call these functions alike.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions
from tive.data import assign_tasks, check_images, load_dataset, write_subset
from tive.data.formats import dataset_sha256
from tive.errors import TiveError
from tive.io import read_json, sha256_file, sha256_json, write_json
from tive.rundir import (
    BASE_MODEL_DIR,
    FEATURES_DIR,
    PREPARE_FILE,
    TASKS_FILE,
    WARMUP_DIR,
    load_prepared,
    ok_rows,
    open_run_dir,
    read_manifest,
    write_manifest,
)
from tive.report import task_table

log = logging.getLogger("tive")

WARMUP_MARKER = "warmup.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Warm-up defaults: a real checkpoint follows the authors (rank 128, alpha 256, lr 2e-5, 1 epoch); the random
# built-in models need a higher learning rate, more epochs and their projector/embeddings/head trained
# (model/tiny.py). `small` uses rank 64 so that its LoRA gradient has over a million numbers.
CHECKPOINT_DEFAULTS = {"lora_rank": 128, "learning_rate": 2e-5, "epochs": 1, "modules_to_save": []}
_RANDOM_INIT_MODULES = ["multi_modal_projector", "embed_tokens", "lm_head"]
BUILTIN_DEFAULTS = {
    "tiny": {"lora_rank": 8, "learning_rate": 1e-3, "epochs": 4, "modules_to_save": _RANDOM_INIT_MODULES},
    "small": {"lora_rank": 64, "learning_rate": 1e-3, "epochs": 4, "modules_to_save": _RANDOM_INIT_MODULES},
}


def say(message: str) -> None:
    """Tell the user (stdout) and the run's log."""
    print(message, flush=True)
    log.info(message)


# ----------------------------------------------------------------------------------------------------- prepare
def run_prepare(data: Path | str, run_dir: Path | str, options: PrepareOptions) -> dict[str, Any]:
    """Read and validate the input, assign tasks, check images; write manifest.jsonl and prepare.json."""
    data = Path(data).resolve()
    run_dir = open_run_dir(run_dir, create=True)
    dataset = load_dataset(data)
    message = assign_tasks(dataset, task_field=options.task_field, task_rules=options.task_rules)
    check_images(dataset, options.images, on_missing=options.on_missing_image)
    info = {
        "data": str(data),
        "data_sha256": dataset_sha256(data),
        "format": dataset.format,
        "images": str(Path(options.images).resolve()) if options.images else None,
        "options": asdict(options),
        "records": len(dataset.records),
        "ok": sum(record.ok for record in dataset.records),
        "tasks": dict(sorted(Counter(record.task for record in dataset.records).items())),
    }
    info_path = run_dir / PREPARE_FILE
    if info_path.is_file():
        old = read_json(info_path)
        if (old["data_sha256"], old["options"]) == (info["data_sha256"], info["options"]):
            say(f"prepare: {run_dir} already prepared from this input with these options; nothing to do")
            return old
        raise TiveError(
            f"{run_dir}: already prepared from another input or with other options; use a new --out directory"
        )
    rows = [
        {"index": r.index, "id": r.record_id, "task": r.task, "status": r.status} for r in dataset.records
    ]
    write_manifest(run_dir, rows)
    write_json(info_path, info)  # last: prepare's completion marker
    skipped = info["records"] - info["ok"]
    say(f"prepare: {message}")
    say(
        f"prepare: {info['records']} records from {data.name} ({dataset.format}), {info['ok']} ok"
        + (f", {skipped} skipped (see status in manifest.jsonl)" if skipped else "")
    )
    return info


# ------------------------------------------------------------------------------------------------------ warmup
def _warmup_settings(options: WarmupOptions) -> dict[str, Any]:
    """The effective warm-up settings: explicit options over the model kind's defaults.

    These decide the reference model, so a finished warm-up with other settings is not reused. The device and
    gradient checkpointing change how it is computed, not what, and are recorded beside them.
    """
    _check_encoding_options(options.dtype, options.max_length)
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


def _check_encoding_options(dtype: str, max_length: int | None) -> None:
    from tive.model.loading import DTYPES

    if dtype not in DTYPES:
        raise TiveError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if max_length is not None and max_length < 2:
        raise TiveError(f"--max-length {max_length}: must be at least 2 (a prompt token and an answer token)")


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
        log_path=warm_dir / "train_log.jsonl",
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


# ---------------------------------------------------------------------------------------------------- features
# Settings of how records become model inputs; stored features made with other values are not reused.
_ENCODING_KEYS = {"dtype": "float32", "max_length": None}


def _check_encoding_provenance(features_dir: Path, meta: dict[str, Any], force: bool) -> None:
    """Refuse stored features made with another dtype or maximum length (unless `force`: then discard them)."""
    meta_path = features_dir / "meta.json"
    if not meta_path.is_file():
        return
    old = read_json(meta_path)
    differing = [key for key, default in _ENCODING_KEYS.items() if old.get(key, default) != meta[key]]
    if differing and not force:
        raise TiveError(
            f"{features_dir}: holds features made with other {', '.join(differing)}; "
            "pass --force to discard them and recompute"
        )
    if differing:
        shutil.rmtree(features_dir)


def _truncation_path(store: Any, chunk: int) -> Path:
    return store.chunks_dir / f"chunk_{chunk:06d}.truncation.json"


def run_features(run_dir: Path | str, options: FeaturesOptions) -> dict[str, Any]:
    """Per-record LoRA gradients of the answer loss: L2 norms and random projections, in resumable chunks."""
    import torch
    from tqdm import tqdm

    from tive.features.grads import GRAD_MODES, BatchedGradients, record_gradient
    from tive.features.projection import make_projector
    from tive.features.store import FeatureStore
    from tive.model.encode import collate, describe_truncation, encode_records
    from tive.model.loading import (
        checkpoint_in_eval,
        enable_gradient_checkpointing,
        load_with_adapter,
        lora_gradients_only,
        model_fingerprint,
        resolve_device,
    )

    run_dir = open_run_dir(run_dir)
    marker = run_dir / WARMUP_DIR / WARMUP_MARKER
    if not marker.is_file():
        raise TiveError(f"{marker}: missing; run `tive warmup {run_dir}` first")
    warm = read_json(marker)
    if min(options.proj_dim, options.chunk_size, options.grad_batch_size) < 1:
        raise TiveError("--proj-dim, --chunk-size and --grad-batch-size must be at least 1")
    if options.grad_mode not in GRAD_MODES:
        raise TiveError(f"--grad-mode {options.grad_mode}: choose one of {', '.join(GRAD_MODES)}")
    _check_encoding_options(options.dtype, options.max_length)
    dataset, _ = load_prepared(run_dir)
    ok = [record for record in dataset.records if record.ok]
    device = resolve_device(options.device)
    model_dir = Path(warm["model_dir"])
    fingerprint = model_fingerprint(model_dir)
    if fingerprint != warm["model_fingerprint"]:
        raise TiveError(f"{model_dir}: changed since the warm-up; rerun `tive warmup {run_dir} --force`")
    adapter_dir = run_dir / WARMUP_DIR / ADAPTER_DIR
    model, processor = load_with_adapter(model_dir, adapter_dir, device, options.dtype)
    if options.gradient_checkpointing:
        enable_gradient_checkpointing(model)
        checkpoint_in_eval(model)
    named_params = lora_gradients_only(model)
    params = [p for _, p in named_params]
    grad_dim = sum(p.numel() for p in params)
    projector = make_projector(options.projector, grad_dim, options.proj_dim, options.proj_seed, device)
    meta = {
        "model": warm["settings"]["model"],
        "model_fingerprint": fingerprint,
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS),
        "projector": projector.describe(),
        "grad_dim": grad_dim,
        "proj_dim": projector.proj_dim,
        "grad_mode": options.grad_mode,
        "records": len(ok),
        "records_sha256": sha256_json([r.index for r in ok]),
        "chunk_size": options.chunk_size,
        "loss": "mean cross-entropy over answer tokens",
        "dtype": options.dtype,
        "max_length": options.max_length,
    }
    store = FeatureStore(run_dir / FEATURES_DIR)
    _check_encoding_provenance(store.dir, meta, options.force)
    n_chunks = (len(ok) + options.chunk_size - 1) // options.chunk_size
    chunks = [ok[c * options.chunk_size : (c + 1) * options.chunk_size] for c in range(n_chunks)]
    if store.open(meta, options.force):
        say(f"features: already computed with the same model, adapter and projection ({store.dir}); nothing to do")
        meta = read_json(store.dir / "meta.json")
    else:
        pad_id = processor.tokenizer.pad_token_id or 0
        batched = BatchedGradients(model, named_params) if options.grad_mode == "batched" else None
        done = sum(len(chunk) for c, chunk in enumerate(chunks) if store.has_chunk(c))
        say(
            f"features: {len(ok)} records, gradient of {grad_dim:,} LoRA numbers -> {projector.proj_dim} dims "
            f"({options.projector}), {options.grad_mode} gradients, {options.dtype}, device {device}"
            + (", gradient checkpointing" if options.gradient_checkpointing else "")
            + (f"; resuming ({done} done)" if done else "")
        )
        # Raw gradients are projected a group at a time so the memory they take stays bounded (~1 GB).
        group = max(1, min(options.grad_batch_size, (1 << 30) // (4 * grad_dim)))
        with tqdm(total=len(ok), initial=done, desc="features", unit="rec", disable=None) as bar:
            for c, chunk in enumerate(chunks):
                if store.has_chunk(c):
                    continue
                encoded = encode_records(processor, chunk, options.max_length)
                items = encoded.items
                # Batches of similar length waste less on padding; the order is fixed, so results are too.
                order = sorted(range(len(chunk)), key=lambda i: (len(items[i]["input_ids"]), i))
                projected = torch.empty(len(chunk), projector.proj_dim)
                norms = torch.empty(len(chunk), dtype=torch.float64)
                for start in range(0, len(order), group):
                    members = order[start : start + group]
                    if batched is not None:
                        inputs = {k: v.to(device) for k, v in collate([items[i] for i in members], pad_id).items()}
                        grads = batched(inputs)
                    else:
                        singles = [{k: v.to(device) for k, v in collate([items[i]], pad_id).items()} for i in members]
                        grads = torch.stack([record_gradient(model, params, inputs) for inputs in singles])
                    with torch.no_grad():
                        norms[members] = grads.double().norm(dim=1).cpu()
                        projected[members] = projector.project(grads.float()).cpu()
                    bar.update(len(members))
                if options.max_length:  # before the chunk's marker, so that a committed chunk has it
                    write_json(_truncation_path(store, c), {
                        "truncated": [chunk[p].index for p in encoded.truncated],
                        "no_answer": [chunk[p].index for p in encoded.no_answer],
                    })
                store.write_chunk(c, projected.numpy(), norms.numpy())
        if options.max_length:
            truncated, no_answer = [], []
            for c in range(n_chunks):
                counts = read_json(_truncation_path(store, c))
                truncated += counts["truncated"]
                no_answer += counts["no_answer"]
            meta = {**meta, "truncated_records": len(truncated), "no_answer_records": no_answer}
        store.merge(n_chunks, len(ok), projector.proj_dim, meta)
    if options.max_length:
        by_index = {record.index: record for record in ok}
        lost = [by_index[i] for i in meta["no_answer_records"]]
        say(
            describe_truncation("features", len(ok), meta["truncated_records"], lost, options.max_length)
            + ("; their gradient is zero (grad_norm 0, value 0)" if lost else "")
        )
    norms = np.load(store.dir / "norms.npy")
    rows = read_manifest(run_dir)
    for row, norm in zip(ok_rows(rows), norms):
        row["grad_norm"] = float(norm)
    write_manifest(run_dir, rows)
    say(f"features: {store.dir / 'features.npy'} ({len(ok)} x {projector.proj_dim}), norms.npy, meta.json")
    return meta


# ------------------------------------------------------------------------------------------------------- score
def _task_info(rows: list[dict[str, Any]], task_values: dict[str, float]) -> dict[str, dict[str, Any]]:
    records = Counter(row["task"] for row in rows)
    ok = Counter(row["task"] for row in ok_rows(rows))
    return {
        task: {"records": records[task], "ok": ok[task], "value": task_values.get(task)}
        for task in sorted(records)
    }


def _ok_grad_norms(run_dir: Path, rows: list[dict[str, Any]]) -> np.ndarray:
    """Gradient norms of the ok rows from the manifest, filled from / checked against features/norms.npy."""
    from tive.features.store import load_features

    ok = ok_rows(rows)
    _, norms = load_features(run_dir / FEATURES_DIR, len(ok))
    for row, norm in zip(ok, norms):
        if row.get("grad_norm") is None:
            row["grad_norm"] = float(norm)
        elif not np.isclose(row["grad_norm"], norm, rtol=1e-6, atol=0.0):
            raise TiveError(
                f"{run_dir / 'manifest.jsonl'}: record {row['index']} (id {row['id']!r}) has grad_norm "
                f"{row['grad_norm']} but features/norms.npy says {norm}; they must agree"
            )
    return np.array([row["grad_norm"] for row in ok], dtype=np.float64)


def run_score(run_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Task values (mean gradient norm) and instance values (mean in-task cosine); written to the manifest."""
    from tive.features.store import load_features
    from tive.scoring import instance_values, task_values

    run_dir = open_run_dir(run_dir)
    rows = read_manifest(run_dir)
    ok = ok_rows(rows)
    if not ok:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to score")
    norms = _ok_grad_norms(run_dir, rows)
    features, _ = load_features(run_dir / FEATURES_DIR, len(ok))
    tasks = [row["task"] for row in ok]
    values = instance_values(features, tasks)
    for row, value in zip(ok, values):
        row["value"] = float(value)
    write_manifest(run_dir, rows)
    info = _task_info(rows, task_values(tasks, norms))
    write_json(run_dir / TASKS_FILE, info)
    say(f"score: {len(ok)} instance values, {len(info)} task values written to manifest.jsonl and tasks.json")
    return info


# ------------------------------------------------------------------------------------------------------ select
def run_select(run_dir: Path | str, options: SelectOptions) -> dict[str, dict[str, Any]]:
    """Split the budget over tasks by value, choose records within each task, write the subset and reports."""
    from tive.scoring import task_values
    from tive.select import budget_count, parse_budget, select_records

    run_dir = open_run_dir(run_dir)
    rows = read_manifest(run_dir)
    ok = ok_rows(rows)
    if not ok or any(row.get("value") is None for row in ok):
        raise TiveError(f"{run_dir}: instance values missing from manifest.jsonl; run `tive score {run_dir}` first")
    tasks = [row["task"] for row in ok]
    unknown = sorted(set(options.exclude_task) - set(tasks))
    if unknown:
        raise TiveError(f"--exclude-task {', '.join(unknown)}: no such task; tasks are {', '.join(sorted(set(tasks)))}")
    norms = _ok_grad_norms(run_dir, rows)
    values = np.array([row["value"] for row in ok], dtype=np.float64)
    t_values = task_values(tasks, norms)
    eligible = sum(task not in options.exclude_task for task in tasks)
    budget = parse_budget(options.budget)
    total = budget_count(budget, eligible)
    counts, budgets = select_records(
        tasks,
        values,
        t_values,
        total,
        method=options.choose,
        temperature=options.temperature,
        seed=options.seed,
        oversample=options.oversample,
        exclude_tasks=options.exclude_task,
    )
    for row in rows:
        row["selected"] = 0
    for row, count in zip(ok, counts):
        row["selected"] = int(count)
    info = _task_info(rows, t_values)
    for task, entry in info.items():
        entry["budget"] = int(budgets.get(task, 0))
        entry["selected"] = sum(row["selected"] for row in rows if row["task"] == task)
        entry["excluded"] = task in options.exclude_task
    write_manifest(run_dir, rows)
    write_json(run_dir / TASKS_FILE, info)
    subset_path = None
    if (run_dir / PREPARE_FILE).is_file():
        dataset, _ = load_prepared(run_dir)
        subset_path = write_subset(dataset, [row["selected"] for row in rows], run_dir)
    say(task_table(info))
    described = f"{budget:g} x {eligible} eligible records" if isinstance(budget, float) else "a count"
    say(
        f"select: {int(counts.sum())} records (budget {described}; choose={options.choose}"
        + (f", temperature={options.temperature}" if options.choose == "sample" else "")
        + f", seed={options.seed})"
        + (f" -> {subset_path}" if subset_path else "; no prepare.json here, so no subset file was written")
    )
    return info


# --------------------------------------------------------------------------------------------------------- all
def run_all(
    data: Path | str,
    run_dir: Path | str,
    prepare: PrepareOptions,
    warmup: WarmupOptions,
    features: FeaturesOptions,
    select: SelectOptions,
) -> dict[str, dict[str, Any]]:
    """Every stage in order; finished stages with the same settings are skipped, so a rerun resumes."""
    run_prepare(data, run_dir, prepare)
    run_warmup(run_dir, warmup)
    run_features(run_dir, features)
    run_score(run_dir)
    return run_select(run_dir, select)
