"""`tive features`: per-record LoRA gradients of the answer loss, their norms and random projections, in chunks.

One code path for one process, the ranks of a `torchrun` / `srun` launch, and independent shards (SLURM array
jobs, `--shard I/K`): each process computes the missing chunks it owns (`tive.launch`) and commits them to the
store (`tive.features.store`); the store is completed by whoever finds every chunk done — rank 0 of a launch
(which waits for its peers), the last shard, or `tive score` — one of them, which claims the completion
(`tive.features.completion`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tive.badrecords import BadRecords, check_policy
from tive.config import FeaturesOptions, write_run_config
from tive.errors import TiveError
from tive.features.completion import complete_store, listed, store_state, sync_manifest
from tive.features.store import FEATURE_DTYPES, FeatureStore
from tive.io import read_json, sha256_file, sha256_json
from tive.launch import Launch, detect_launch
from tive.rundir import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    FEATURES_DIR,
    WARMUP_DIR,
    WARMUP_MARKER,
    candidate_rows,
    load_prepared,
    open_run_dir,
    read_manifest,
    stage_log,
)
from tive.stages.common import check_encoding_options, say
from tive.stages.retry import finish_retry, recheck_features, retry_skipped

# How often rank 0 looks for its peers' chunks while it waits to complete the store.
POLL_SECONDS = 2.0


def read_warmup(run_dir: Path) -> dict[str, Any]:
    """The finished warm-up's marker, refused when it was made with another encoding of the records."""
    from tive.model.encode import ENCODING_VERSION

    marker = run_dir / WARMUP_DIR / WARMUP_MARKER
    if not marker.is_file():
        raise TiveError(f"{marker}: missing; run `tive warmup {run_dir}` first")
    warm = read_json(marker)
    version = warm["settings"].get("encoding_version", 1)
    if version != ENCODING_VERSION:
        raise TiveError(
            f"{marker}: the warm-up was made with encoding version {version}, this tive encodes records with "
            f"version {ENCODING_VERSION} (one BOS, an end-of-turn token after every answer); redo the warm-up, then "
            f"the features (they cannot be mixed with new ones): {redo_advice(run_dir, warm)}"
        )
    return warm


def _last_layers(options: FeaturesOptions) -> int | None:
    """K of `--layers last:K`, or None for every LoRA matrix."""
    from tive.model.loading import parse_layers

    return parse_layers(options.layers)


def feature_request(run_dir: Path, warm: dict[str, Any], options: FeaturesOptions,
                    candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything that decides the features and is known before the model is loaded (the store's provenance)."""
    from tive.features.projection import projector_version
    from tive.model.encode import ENCODING_VERSION
    from tive.model.loading import model_fingerprint

    model_dir = Path(warm["model_dir"])
    fingerprint = model_fingerprint(model_dir)
    if fingerprint != warm["model_fingerprint"]:
        raise TiveError(f"{model_dir}: the base model changed since the warm-up (its files differ); redo the warm-up "
                        f"on it, then the features: {redo_advice(run_dir, warm)}")
    return {
        "model": warm["settings"]["model"],
        "model_fingerprint": fingerprint,
        "adapter_sha256": sha256_file(run_dir / WARMUP_DIR / ADAPTER_DIR / ADAPTER_WEIGHTS),
        "encoding_version": ENCODING_VERSION,
        "projector": {"type": options.projector, "version": projector_version(options.projector),
                      "seed": options.proj_seed, "dim": options.proj_dim},
        "grad_mode": options.grad_mode,
        "candidates": len(candidates),
        "candidates_sha256": sha256_json([row["index"] for row in candidates]),
        "chunk_size": options.chunk_size,
        "dtype": options.dtype,
        "max_length": options.max_length,
        "feature_dtype": options.feature_dtype,
        "loss": "mean cross-entropy over answer tokens",
        # `--layers last:K` only: absent means every LoRA matrix, so stores made before the option still match.
        **({"layers": f"last:{last}"} if (last := _last_layers(options)) is not None else {}),
    }


def redo_advice(run_dir: Path, warm: dict[str, Any]) -> str:
    """The commands that redo the warm-up with its own options, then the features with theirs (both forced)."""
    from tive.config import CONFIG_FILE, load_config

    config = run_dir / CONFIG_FILE
    sections = load_config(config) if config.is_file() else {}
    warmup = f"--config {config}" if "warmup" in sections else f"--model {warm['settings']['model']}"
    features = f" --config {config}" if "features" in sections else ""
    return (f"`tive warmup {run_dir} {warmup} --force`, then `tive features {run_dir}{features} --force`"
            + ("" if "warmup" in sections else " (with the warm-up's other options as before)"))


def _check_options(options: FeaturesOptions) -> None:
    from tive.features.grads import GRAD_MODES
    from tive.features.projection import projector_names

    for name, least in (("proj_dim", 1), ("chunk_size", 1), ("grad_batch_size", 1), ("loader_workers", 0)):
        if getattr(options, name) is not None and getattr(options, name) < least:
            raise TiveError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be at least {least}")
    if not options.wait_timeout > 0:
        raise TiveError(f"--wait-timeout {options.wait_timeout}: must be positive (seconds)")
    if options.grad_mode not in GRAD_MODES:
        raise TiveError(f"--grad-mode {options.grad_mode}: choose one of {', '.join(GRAD_MODES)}")
    if options.projector not in projector_names():
        raise TiveError(f"--projector {options.projector}: choose one of {', '.join(projector_names())}")
    if options.feature_dtype not in FEATURE_DTYPES:
        raise TiveError(f"--feature-dtype {options.feature_dtype}: choose one of {', '.join(FEATURE_DTYPES)}")
    check_encoding_options(options.dtype, options.max_length)
    check_policy(options.on_bad_record, options.max_bad_fraction)
    from tive.model.loading import parse_layers

    parse_layers(options.layers)


def run_features(run_dir: Path | str, options: FeaturesOptions) -> dict[str, Any]:
    """Per-record LoRA gradients of the answer loss: L2 norms and random projections, in resumable chunks.

    Returns the store's meta.json (complete), or, for a shard that leaves chunks to others, its current state.
    """
    _check_options(options)
    launch = detect_launch(options.shard)
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        meta = _features(run_dir, options, launch)
    if launch.rank == 0:
        write_run_config(run_dir, features=replace(options, shard=None))
    return meta


def _features(run_dir: Path, options: FeaturesOptions, launch: Launch) -> dict[str, Any]:
    warm = read_warmup(run_dir)
    candidates = candidate_rows(read_manifest(run_dir))
    if not candidates:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to compute")
    store = FeatureStore(run_dir / FEATURES_DIR)
    if launch.rank == 0:  # only rank 0 retries (`--retry-skipped`): the others leave its scratch store alone
        finish_retry(store)
    request = feature_request(run_dir, warm, options, candidates)
    if store.is_complete(request) and not options.force:
        if options.retry_skipped:
            return retry_skipped(run_dir, options, launch, warm, store, candidates)
        say(f"features: already computed with the same model, adapter and projection ({store.dir}); nothing to do")
        recheck_features(run_dir, store.meta() or {}, len(candidates), options)
        return sync_manifest(run_dir, store)
    if options.retry_skipped and not options.force:
        say("features: --retry-skipped: the store is not complete yet; computing it first (the records it skips "
            f"can be retried by a later `tive features {run_dir} --retry-skipped`)")
    store.start(request, options.force, shared=launch.world > 1)
    size = options.chunk_size
    chunk_rows = [candidates[start : start + size] for start in range(0, len(candidates), size)]
    missing = store.missing_chunks(len(chunk_rows))
    mine = [chunk for chunk in missing if launch.owns(chunk)]
    if mine:
        _compute(run_dir, options, launch, warm, store, chunk_rows, missing, len(candidates))
    return complete_features(run_dir, store, wait=launch.concurrent and launch.rank == 0, launch=launch,
                             wait_timeout=options.wait_timeout)


def _compute(run_dir: Path, options: FeaturesOptions, launch: Launch, warm: dict[str, Any], store: FeatureStore,
             chunk_rows: list[list[dict[str, Any]]], missing: list[int], n_candidates: int) -> None:
    """Load the reference model and compute this process's chunks (those of `missing`, the chunks the launch
    found still to compute when it started, that it owns)."""
    mine = [chunk for chunk in missing if launch.owns(chunk)]
    from tive.features.extract import choose_batch_size, extract_chunks, make_extraction
    from tive.model.loading import load_with_adapter, resolve_device

    device = resolve_device(options.device)
    if device == "cuda" and launch.world > 1:
        import torch

        # One GPU per local rank; where the scheduler binds one GPU to each task (srun --gpus-per-task 1) every
        # task sees a single device 0.
        device = f"cuda:{launch.local_rank % max(1, torch.cuda.device_count())}"
    dataset, _ = load_prepared(run_dir, lazy=True)  # records read when computed: memory flat in the dataset's size
    model, processor = load_with_adapter(Path(warm["model_dir"]), run_dir / WARMUP_DIR / ADAPTER_DIR, device,
                                         options.dtype)
    job = make_extraction(model, processor, options, device, launch.describe(), launch.world)
    projector, grad_dim = job.projector, job.described["grad_dim"]
    chunks = [(chunk, dataset.records.take([row["index"] for row in chunk_rows[chunk]])) for chunk in mine]
    n_records = sum(len(records) for _, records in chunks)
    done = sum(len(rows) for chunk, rows in enumerate(chunk_rows) if store.has_chunk(chunk))
    # Probed with the longest record of this process's whole share: a later, longer chunk must fit too.
    share = dataset.records.take([row["index"] for chunk in mine for row in chunk_rows[chunk]])
    job.batch_size, batch_reason = choose_batch_size(options.grad_batch_size, job, share)
    if options.projector == "dense":
        _check_dense(job, store, chunks[0][1][: job.batch_size], n_records, options.allow_slow_projection,
                     launch.describe())
    say(
        f"features: {n_records} of {n_candidates} records ({len(mine)} chunks) on {launch.describe()}, gradient of "
        f"{grad_dim:,} LoRA numbers"
        + (f" (the last {_last_layers(options)} decoder layers' only)" if _last_layers(options) else "")
        + f" -> {projector.proj_dim} dims ({options.projector}), {options.grad_mode} "
        f"gradients, {batch_reason}, {options.dtype} weights, {options.feature_dtype} features, "
        f"device {device}" + (", gradient checkpointing" if options.gradient_checkpointing else "")
        + (f"; {done} records already done" if done else "")
    )
    bad = BadRecords("features", dataset.path, options.on_bad_record, options.max_bad_fraction, n_records)
    started = time.perf_counter()
    with _progress(options, launch, store, chunk_rows, missing, n_records) as progress:
        extract_chunks(job, chunks, store, bad, progress, options.loader_workers)
    say(f"features: {n_records} records in {time.perf_counter() - started:.1f} s on {launch.describe()}"
        + (f"; {bad.summary()}" if bad.reasons else ""))


def _progress(options: FeaturesOptions, launch: Launch, store: FeatureStore, chunk_rows: list[list[dict[str, Any]]],
              missing: list[int], n_records: int) -> Any:
    """The features' progress display. Every independent shard (array task, --shard) and a single process show
    their own; of a torchrun / srun launch, rank 0 shows the launch's (its records and those of the chunks the other
    ranks commit, against all the launch computes: the chunks missing when the stage started, fixed then, so a rank
    that commits its chunks before rank 0's display starts still counts) and the other ranks none."""
    from tive.progress import Progress

    if not launch.concurrent:
        desc = "features" if launch.world == 1 else f"features ({launch.describe()})"
        return Progress(desc, n_records, "rec", 0, options.progress_interval, True)
    if launch.rank != 0:
        return Progress("features", n_records, "rec", 0, options.progress_interval, False)
    theirs = [chunk for chunk in missing if not launch.owns(chunk)]
    total = n_records + sum(len(chunk_rows[chunk]) for chunk in theirs)

    def others() -> int:
        return sum(len(chunk_rows[chunk]) for chunk in theirs if store.has_chunk(chunk))

    return Progress(f"features ({launch.world} ranks)", total, "rec", 0, options.progress_interval, True,
                    others=others)


def _check_dense(job: Any, store: FeatureStore, batch: list[Any], n_records: int, allow: bool,
                 process: str) -> None:
    """Refuse the dense projection when it would cost more than twice the gradients, unless `allow`.

    Decided once for the store: the first process to measure records its decision (features/projection_check.json,
    copied into meta.json at the merge); every other process and every restart follows it, so a borderline case is
    never accepted on one rank and refused on another. `--force` (a new store) decides again.
    """
    from tive.features.extract import dense_refusal, measure_dense_cost

    check = store.projection_check()
    if check is None:
        measured = measure_dense_cost(job, batch)
        if measured is None:
            return
        check = store.record_projection_check({**measured, "decided_by": process})
    if check["accepted"]:
        return
    if not allow:
        raise TiveError(dense_refusal(check, job.projector.grad_dim, job.projector.proj_dim)
                        + f" (measured by {check['decided_by']}, recorded in {store.dir / 'projection_check.json'})")
    store.allow_projection()
    batches = -(-n_records // max(1, check["batch"]))
    say(f"features: --allow-slow-projection: projecting a batch of {check['batch']} takes ~"
        f"{check['projecting_seconds']:.3g} s against ~{check['backward_seconds']:.3g} s for its gradients "
        f"({check['projecting_seconds'] / max(check['backward_seconds'], 1e-12):.0f}x); ~"
        f"{batches * check['projecting_seconds'] / 3600:.3g} h of projection for this process's {n_records} records")


def complete_features(run_dir: Path, store: FeatureStore, wait: bool = False,
                      launch: Launch | None = None, wait_timeout: float = 3600.0) -> dict[str, Any]:
    """Complete the store when every chunk is done and this process is one that completes (see
    `tive.features.completion`), waiting for the chunks with `wait`; then bring the manifest up to date.

    A non-zero rank of a torchrun / srun launch never completes: rank 0 does, after waiting for it. Without `wait`
    and with chunks missing, returns the store's meta.json as it is and says what is missing. With `wait`, gives up
    (naming the missing chunks) after `wait_timeout` seconds without a new chunk.
    """
    meta, chunk_records, missing = store_state(run_dir, store)
    if chunk_records is None:
        return meta
    if missing and wait:
        say(f"features: waiting for {len(missing)} chunk(s) of the other ranks")
        last_news = time.monotonic()
        while missing:
            time.sleep(POLL_SECONDS)
            if (store.meta() or {}).get("complete"):
                return sync_manifest(run_dir, store)
            still = store.missing_chunks(len(chunk_records))
            if len(still) < len(missing):
                last_news = time.monotonic()
            elif time.monotonic() - last_news > wait_timeout:
                shards = launch.world if launch is not None else store.chunk_world()
                raise TiveError(
                    f"features: no new chunk for {wait_timeout:g} s; still missing chunk(s) "
                    f"{_listed(still)} of rank(s) {_listed(sorted({c % shards for c in still}))}: a rank died or "
                    f"hangs. Rerun the launch to resume (done chunks are kept), or raise --wait-timeout"
                )
            missing = still
    peer = launch is not None and launch.concurrent and launch.rank != 0
    if missing or peer:
        shards = launch.world if launch is not None and launch.world > 1 else store.chunk_world()
        owners = sorted({chunk % shards for chunk in missing})
        say(
            (f"features: {len(missing)} of {len(chunk_records)} chunks still to compute"
             + (f" (shards {', '.join(map(str, owners))} of {shards})" if shards > 1 else "") if missing else
             "features: every chunk is done")
            + (f"; this process ({launch.describe()}) is done" if launch is not None and launch.world > 1 else "")
            + ("; rank 0 completes the store" if peer else
               f"; `tive score {run_dir}` completes the store once they are done")
        )
        return meta
    process = launch.describe() if launch is not None and launch.world > 1 else "one process"
    return complete_store(run_dir, store, process, wait=launch is None or launch.concurrent or launch.world == 1,
                          wait_timeout=wait_timeout)


_listed = listed
