"""`tive features --retry-skipped`: compute again the records a complete store skipped for a reason that can
change, and merge them in.

A record the features stage cannot use is skipped (`skipped: features: <reason>` in the manifest, the reason in
`features/meta.json`). One reason lies outside the record and the run's settings: an image that could not be read
(missing, cut short or unreadable at the time — a copy that had not finished, a mount that was down); once the
image is fixed or restored, the record can have features. The other reasons (a conversation the chat template
refuses, no answer token within `--max-length`, image tokens past it, a gradient that is not finite in this
`--dtype`) would fail the same way with the same request: those records are kept as they are. Out of memory is not
a skip: it stops the stage, and a rerun with a smaller `--grad-batch-size` resumes its chunks.

The retried records are computed in one process (rank 0 of a launch) as one chunk of a scratch store in
`features/retry/`, then merged with the store's rows into new arrays there, the store's contract kept: one row per
`ok` record, in manifest order, the rows computed before unchanged, `records_sha256`, `skipped` and
`truncated_records` updated, the retry listed under `retries`. The commit moves the arrays, then meta.json (the
marker, last) into place; `merged.json` in the scratch store says the merge is complete, so a commit cut short
is finished by the next features run (`finish_retry`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tive.badrecords import BadRecords, recheck
from tive.config import FeaturesOptions
from tive.features.store import FEATURES_FILE, NORMS_FILE, FeatureStore
from tive.io import atomic_path, sha256_json, write_json
from tive.launch import Launch
from tive.rundir import ADAPTER_DIR, WARMUP_DIR, load_prepared
from tive.stages.common import say

RETRY_DIR = "retry"
_BLOCK_ROWS = 4096
MERGED = "merged.json"  # the scratch store's marker: the merged arrays beside it are complete


def retryable(reason: str) -> bool:
    """Whether a features skip has a reason that can change without changing the run: an image not readable."""
    return reason.startswith("cannot read image")


def finish_retry(store: FeatureStore) -> None:
    """Finish a retry's commit that was cut short (its merge complete: move what is left into place), or remove a
    retry that never merged (a later --retry-skipped computes it again)."""
    scratch = store.dir / RETRY_DIR
    if not scratch.is_dir():
        return
    if (scratch / MERGED).is_file():
        for name in (FEATURES_FILE, NORMS_FILE):
            if (scratch / name).is_file():
                os.replace(scratch / name, store.dir / name)
        os.replace(scratch / MERGED, store.meta_path)  # last: the store's marker
        say(f"features: finished merging the records retried before ({store.dir})")
    shutil.rmtree(scratch, ignore_errors=True)


def recheck_features(run_dir: Path, meta: dict[str, Any], n_candidates: int, options: FeaturesOptions) -> None:
    """The records a complete store skipped, checked against this command's tolerances (the cap it ran with is
    the one config.yaml recorded)."""
    from tive.config import recorded_option

    skipped = meta.get("skipped", {})
    first = next(iter(skipped.items()), None)
    line = recheck("features", len(skipped), n_candidates, options.on_bad_record, options.max_bad_fraction,
                   recorded_option(run_dir, "features", "max_bad_fraction"),
                   f"record {first[0]}: {first[1]}" if first else None,
                   hint=f"fix them (an image: then `tive features {run_dir} --retry-skipped`)")
    if line:
        say(line)


def retry_skipped(run_dir: Path, options: FeaturesOptions, launch: Launch, warm: dict[str, Any],
                  store: FeatureStore, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute again the complete store's records skipped for a reason that can change; merge those that now work.

    Returns the store's meta.json (the new one when some record was recovered).
    """
    from tive.stages.features import sync_manifest

    meta = store.meta() or {}
    skipped = meta.get("skipped", {})
    retry = [int(index) for index, reason in skipped.items() if retryable(reason)]
    kept = {index: reason for index, reason in skipped.items() if not retryable(reason)}
    if not retry:
        say("features: --retry-skipped: no skipped record to retry"
            + (f" ({len(kept)} skipped for their content, which a retry would not change: kept)" if kept else ""))
        return sync_manifest(run_dir, store)
    if launch.rank != 0:
        say(f"features: --retry-skipped: rank 0 retries the {len(retry)} skipped record(s); this process "
            f"({launch.describe()}) has nothing to do")
        return meta
    say(f"features: --retry-skipped: {len(retry)} of {len(skipped)} skipped records were skipped for a reason that "
        "can change (an image that could not be read); computing them again"
        + (f" ({len(kept)} skipped for their content: kept)" if kept else ""))
    info, recovered = _compute(run_dir, options, warm, store, meta["request"], retry, kept, len(candidates))
    still = info.get("skipped", {})
    if not recovered:
        shutil.rmtree(store.dir / RETRY_DIR, ignore_errors=True)
        say(f"features: --retry-skipped: none of the {len(retry)} retried records could be used yet (first: "
            f"record {min(still, key=int)}: {still[min(still, key=int)]}); the store is as it was")
        return sync_manifest(run_dir, store)
    _merge(store, meta, candidates, info)
    finish_retry(store)
    say(f"features: --retry-skipped: {len(recovered)} of {len(retry)} retried records now have features"
        + (f"; {len(still)} still fail (first: record {min(still, key=int)}: {still[min(still, key=int)]})"
           if still else "") + f"; the values and selections made before are cleared (`tive score {run_dir}` and "
        f"`tive select {run_dir}` make them again)")
    return sync_manifest(run_dir, store, fresh=True)


def _compute(run_dir: Path, options: FeaturesOptions, warm: dict[str, Any], store: FeatureStore,
             request: dict[str, Any], retry: list[int], kept: dict[str, str],
             n_candidates: int) -> tuple[dict[str, Any], list[int]]:
    """The retried records as chunk 0 of the scratch store; (its marker, the records that now have features)."""
    from tive.features.extract import choose_batch_size, extract_chunks, make_extraction
    from tive.model.loading import load_with_adapter, resolve_device
    from tive.progress import Progress

    device = resolve_device(options.device)
    dataset, _ = load_prepared(run_dir, lazy=True)
    records = dataset.records.take(sorted(retry))
    scratch = FeatureStore(store.dir / RETRY_DIR)
    scratch.start(request, force=True, shared=False)
    model, processor = load_with_adapter(Path(warm["model_dir"]), run_dir / WARMUP_DIR / ADAPTER_DIR, device,
                                         options.dtype)
    job = make_extraction(model, processor, options, device, "retry")
    job.batch_size, _ = choose_batch_size(options.grad_batch_size, job, records)  # probed with the longest
    # The stage's whole record: the records skipped for their content count as before, the retried ones anew.
    bad = BadRecords("features", dataset.path, options.on_bad_record, options.max_bad_fraction, n_candidates)
    bad.restore({"reasons": kept, "processed": n_candidates - len(records)})
    started = time.perf_counter()
    with Progress("features (retry)", len(records), "rec", 0, options.progress_interval) as progress:
        extract_chunks(job, [(0, records)], scratch, bad, progress, options.loader_workers)
    info = scratch.chunk_info(0)
    info["seconds"] = round(time.perf_counter() - started, 3)
    return info, list(info["rows"])


def _merge(store: FeatureStore, meta: dict[str, Any], candidates: list[dict[str, Any]],
           info: dict[str, Any]) -> None:
    """Write the merged arrays and meta.json into the scratch store, `merged.json` last (see the module's text)."""
    from tive.errors import TiveError

    scratch = store.dir / RETRY_DIR
    old_skipped = meta.get("skipped", {})
    old_rows = [row["index"] for row in candidates if str(row["index"]) not in old_skipped]
    if sha256_json(old_rows) != meta.get("records_sha256"):
        raise TiveError(f"{store.dir}: its rows are not the records manifest.jsonl lists; rerun `tive features "
                        f"{store.dir.parent} --force`")
    retried = {str(index) for index in info["rows"]} | set(info.get("skipped", {}))
    skipped = {**{i: r for i, r in old_skipped.items() if i not in retried}, **info.get("skipped", {})}
    rows = [row["index"] for row in candidates if str(row["index"]) not in skipped]
    source = {index: ("old", position) for position, index in enumerate(old_rows)}
    source.update({index: ("new", position) for position, index in enumerate(info["rows"])})
    old_x = np.load(store.dir / FEATURES_FILE, mmap_mode="r")
    old_n = np.load(store.dir / NORMS_FILE)
    new_x_path, new_n_path, _ = scratch_chunk_paths(scratch)
    new_x, new_n = np.load(new_x_path), np.load(new_n_path)
    if new_x.dtype != old_x.dtype or new_x.shape[1:] != old_x.shape[1:]:
        raise TiveError(f"{new_x_path}: {new_x.dtype} {new_x.shape} rows do not fit the store's {old_x.dtype} "
                        f"{old_x.shape}; rerun `tive features {store.dir.parent} --force`")
    is_new = np.array([source[index][0] == "new" for index in rows], dtype=bool)
    at = np.array([source[index][1] for index in rows], dtype=np.int64)
    with atomic_path(scratch / FEATURES_FILE) as tmp_x, atomic_path(scratch / NORMS_FILE) as tmp_n:
        features = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=old_x.dtype,
                                             shape=(len(rows), *old_x.shape[1:]))
        norms = np.lib.format.open_memmap(tmp_n, mode="w+", dtype=np.float64, shape=(len(rows),))
        for start in range(0, len(rows), _BLOCK_ROWS):  # a block at a time: the store need not fit in memory
            block = slice(start, start + _BLOCK_ROWS)
            new, where = is_new[block], at[block]
            x = np.empty((len(where), *old_x.shape[1:]), dtype=old_x.dtype)
            n = np.empty(len(where), dtype=np.float64)
            x[~new], x[new] = old_x[where[~new]], new_x[where[new]]
            n[~new], n[new] = old_n[where[~new]], new_n[where[new]]
            features[block], norms[block] = x, n
        features.flush()
        norms.flush()
        del features, norms
    merged = {
        **meta,
        "records": len(rows),
        "records_sha256": sha256_json(rows),
        "skipped": dict(sorted(skipped.items(), key=lambda kv: int(kv[0]))),
        "truncated_records": meta.get("truncated_records", 0) + len(info.get("truncated", [])),
        "retries": [*meta.get("retries", []), {
            "records": len(retried), "recovered": len(info["rows"]),
            **{key: info[key] for key in ("computed_by", "device", "batch_size", "seconds") if key in info},
        }],
        "complete": True,
    }
    write_json(scratch / MERGED, merged)  # last: the merge is complete, the commit may begin


def scratch_chunk_paths(scratch: Path) -> tuple[Path, Path, Path]:
    """The files of the scratch store's one chunk."""
    return FeatureStore(scratch)._chunk_paths(0)

