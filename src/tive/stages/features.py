"""`tive features`: per-record LoRA gradients of the answer loss, their norms and random projections, in chunks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tive.config import FeaturesOptions
from tive.errors import TiveError
from tive.io import read_json, sha256_file, sha256_json, write_json
from tive.rundir import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    FEATURES_DIR,
    WARMUP_DIR,
    WARMUP_MARKER,
    load_prepared,
    ok_rows,
    open_run_dir,
    read_manifest,
    write_manifest,
)
from tive.stages.common import check_encoding_options, say

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
    check_encoding_options(options.dtype, options.max_length)
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


