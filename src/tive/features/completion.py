"""Completing the feature store: one operation, one owner.

Completing means merging every chunk into features.npy / norms.npy, writing the store's statuses and norms into
manifest.jsonl (clearing the values and selections made from earlier features) and only then marking meta.json
"complete": a process that sees a complete store may score and select at once, and nothing rewrites the manifest
under it afterwards.

Who completes (`tive.stages.features.complete_features` decides): rank 0 of a torchrun / srun launch (after
waiting for its peers' chunks), one process or an independent shard that finds every chunk done, or `tive score`.
Several of those may find every chunk done at the same moment (two shards finishing together, `tive score` run by
hand beside a launch), so the completion is claimed first (`FeatureStore.claim_completion`, an atomic create that
works on NFS): the process that holds the claim completes; the others either wait for it (rank 0 of a launch,
`tive score`) or leave it (a shard), and a claim whose owner is gone is taken over. meta.json names the process
that completed the store (`completed_by`), so `tive run` knows whether this process is the one to score and select.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.features.store import NORMS_FILE, FeatureStore
from tive.io import sha256_json
from tive.rundir import FEATURES_SKIP, candidate_rows, ok_rows, read_manifest, write_manifest
from tive.stages.common import say

# How often a process that waits for another's completion looks at the store.
POLL_SECONDS = 1.0

# This process, as it names itself in a completion claim (one token per process).
_TOKEN = uuid.uuid4().hex


def owner_of_this_process(process: str) -> dict[str, Any]:
    """What a claim says about its owner: the host and process id (to tell whether it is gone), how tive describes
    the process ("rank 0 of 8 (torchrun)"), and a token unique to this process."""
    return {"process": process, "host": socket.gethostname(), "pid": os.getpid(), "token": _TOKEN}


def completed_here(meta: dict[str, Any]) -> bool:
    """Whether this process completed the store `meta` describes."""
    return (meta.get("completed_by") or {}).get("token") == _TOKEN


def chunk_records_of(run_dir: Path, store: FeatureStore, meta: dict[str, Any]) -> list[list[int]]:
    """Per chunk, the candidate records it must account for; refuses a store started for other records."""
    request = meta["request"]
    candidates = candidate_rows(read_manifest(run_dir))
    if sha256_json([row["index"] for row in candidates]) != request["candidates_sha256"]:
        raise TiveError(f"{store.dir}: was started for other records than manifest.jsonl's; rerun "
                        f"`tive features {run_dir} --force`")
    size = request["chunk_size"]
    return [[row["index"] for row in candidates[s : s + size]] for s in range(0, len(candidates), size)]


def complete_store(run_dir: Path, store: FeatureStore, process: str, wait: bool,
                   wait_timeout: float) -> dict[str, Any]:
    """Complete the store whose chunks are all done, unless another process holds the completion.

    Args:
        process: how this process is described (recorded as the completion's owner).
        wait: when another process holds the claim, wait until it has completed the store (taking the claim over
            once it is found gone); without `wait`, return the store's meta.json as it is.
        wait_timeout: seconds after which a claim that shows no progress counts as abandoned.

    Returns:
        The store's meta.json: complete, or (without `wait`, another process completing it) not yet.
    """
    owner = owner_of_this_process(process)
    while True:
        meta = store.meta() or {}
        if meta.get("complete"):
            return sync_manifest(run_dir, store)
        chunk_records = chunk_records_of(run_dir, store, meta)
        if store.claim_completion(owner, wait_timeout):
            try:
                meta = store.meta() or {}
                if meta.get("complete"):  # another completed it between our look and our claim
                    return sync_manifest(run_dir, store)
                return store.merge(chunk_records, meta["request"]["feature_dtype"], completed_by=owner,
                                   before_complete=lambda merged: sync_manifest(run_dir, store, fresh=True,
                                                                                meta=merged))
            finally:
                store.release_completion(owner)
        holder = store.completion_claim()
        if holder is None and not store.claim_path.exists():
            continue  # its holder let go since our claim (done, or failed): look again
        holder = holder or {}
        if not wait:
            say(f"features: {holder.get('process', 'another process')} is completing the store")
            return meta
        say(f"features: waiting for {holder.get('process', 'another process')} (host {holder.get('host')}, pid "
            f"{holder.get('pid')}) to complete the store; a claim without progress for {wait_timeout:g} s is taken "
            f"over (if that process is known to be gone, remove {store.claim_path})")
        # Until it is complete, or the claim is released (its owner failed) or abandoned: then claim it here.
        while (not (store.meta() or {}).get("complete") and store.completion_claim() is not None
               and not store.claim_is_abandoned(wait_timeout)):
            time.sleep(POLL_SECONDS)


def store_state(run_dir: Path, store: FeatureStore) -> tuple[dict[str, Any], list[list[int]] | None, list[int]]:
    """(meta.json, per chunk its records, the chunks still missing) of a started store; of a complete one
    (its meta.json after the manifest is brought up to date, None, []).

    Raises:
        TiveError: no store has been started, or it was started for other records.
    """
    meta = store.meta()
    if meta is None:
        raise TiveError(f"{store.dir}: no features here; run `tive features {run_dir}`")
    if meta.get("complete"):
        return sync_manifest(run_dir, store), None, []
    chunk_records = chunk_records_of(run_dir, store, meta)
    return meta, chunk_records, store.missing_chunks(len(chunk_records))


def complete_when_done(run_dir: Path, store: FeatureStore, process: str,
                       wait_timeout: float = 3600.0) -> dict[str, Any]:
    """What a stage that needs a complete store asks (`tive score`): the complete store's meta.json, completing it
    here when every chunk is done (or waiting for the process completing it); with chunks still to compute, the
    meta.json as it is, after saying which shards owe them."""
    meta, chunk_records, missing = store_state(run_dir, store)
    if chunk_records is None:
        return meta
    if missing:
        shards = store.chunk_world()
        owners = sorted({chunk % shards for chunk in missing})
        say(f"features: {len(missing)} of {len(chunk_records)} chunks still to compute"
            + (f" (shards {', '.join(map(str, owners))} of {shards})" if shards > 1 else ""))
        return meta
    return complete_store(run_dir, store, process, wait=True, wait_timeout=wait_timeout)


def sync_manifest(run_dir: Path, store: FeatureStore, fresh: bool = False,
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the store's statuses and norms into manifest.jsonl.

    A record of the candidates the store skipped gets `skipped: features: <reason>`; the others `ok` with their
    gradient norm, in manifest order (the rows of features.npy). When the store was just merged (`fresh`), or the
    manifest did not agree with it, the values and selections made from earlier features are cleared. `meta`: the
    merged store's meta.json before it is written (during the completion), else read from the store.
    """
    meta = store.meta() or {} if meta is None else meta
    rows = read_manifest(run_dir)
    skipped = meta.get("skipped", {})
    norms = np.load(store.dir / NORMS_FILE)
    candidates = candidate_rows(rows)
    kept = [row for row in candidates if str(row["index"]) not in skipped]
    if len(kept) != len(norms):
        raise TiveError(f"{store.dir}: {len(norms)} feature rows for {len(kept)} records; rerun `tive features "
                        f"{run_dir} --force`")
    if meta.get("records_sha256") != sha256_json([row["index"] for row in kept]):
        raise TiveError(f"{store.dir}: its rows are not the records manifest.jsonl lists; rerun `tive features "
                        f"{run_dir} --force`")
    before = [(row["status"], row.get("grad_norm")) for row in candidates]
    norm_of = iter(norms)
    for row in candidates:
        reason = skipped.get(str(row["index"]))
        row["status"] = "ok" if reason is None else FEATURES_SKIP + reason
        row["grad_norm"] = None if reason is not None else float(next(norm_of))
    if fresh or before != [(row["status"], row.get("grad_norm")) for row in candidates]:
        for row in rows:  # new features: earlier values and selections no longer describe them
            row["value"] = None
            row["selected"] = None
        write_manifest(run_dir, rows)
    n_ok = len(ok_rows(rows))
    max_length = meta["request"].get("max_length")
    if max_length:
        say(f"features: --max-length {max_length}: {meta.get('truncated_records', 0)} of {len(candidates)} records "
            "truncated")
    say(f"features: {store.dir / 'features.npy'} ({n_ok} x {meta.get('proj_dim')}), norms.npy, meta.json"
        + (f"; {len(skipped)} record(s) skipped (status in manifest.jsonl; first: record "
           f"{min(skipped, key=int)}: {skipped[min(skipped, key=int)]})" if skipped else ""))
    return meta


def listed(numbers: Sequence[int], limit: int = 12) -> str:
    """`numbers` as "1, 3, 5 and 7 more"."""
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")
