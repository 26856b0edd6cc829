"""The feature store: per-chunk files committed atomically by any number of processes, merged into
memory-mappable arrays.

    features/meta.json                     provenance (`request` + what the model gave); "complete": true once
                                           merged, written last
    features/chunks/chunk_000003.x.npy     projected gradients of the ok records of chunk 3
    features/chunks/chunk_000003.norm.npy  their unprojected L2 norms
    features/chunks/chunk_000003.json      the chunk's marker, written last: its ok records, the records skipped
                                           (with reasons), truncations, the batch size and who computed it
    features/features.npy                  all rows (rows = ok manifest records, in manifest order)
    features/norms.npy                     all norms (float64)

**Chunks.** The records a features run works on (its *candidates*: the records prepare left ok) are cut into
chunks of `chunk_size` in manifest order; chunk c belongs to rank c mod world of the launch that computes it
(`tive.launch`). A chunk is the unit of resumption: a process commits each of its chunks as it finishes, a
killed or resumed run (with any number of processes) recomputes only the chunks without a marker, and the merged
arrays are byte-identical to an uninterrupted run's on the CPU. Chunks left without a `meta.json` (their
provenance unknown) are never reused.

**Merge.** Once every chunk has its marker, the process that completes the store (rank 0 of a torchrun/srun
launch, the last shard, or `tive score`: `tive.features.completion`) claims the completion (`completing.json`, an
atomic create that names its owner), validates each chunk's shapes, concatenates them into features.npy /
norms.npy, lets the caller bring the manifest up to date, writes `meta.json` with "complete": true and removes the
chunks, so the store on disk is the final arrays. Only the claim's owner merges; a claim whose owner is gone (its
process ended, on this host, or no sign of progress for `--wait-timeout` seconds) is taken over.

**Provenance.** `meta.json`'s `request` holds everything that decides the numbers and is known before the model is
loaded (model fingerprint, adapter SHA-256, encoding version, projector type/version/seed/dimension, gradient
mode, the candidates, chunk size, weight dtype, maximum length, feature dtype): a store made with another request
is refused (or, with force, discarded), and a complete one with the same request means there is nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.io import atomic_path, read_json, sha256_json, write_json

META_FILE = "meta.json"
FEATURES_FILE = "features.npy"
NORMS_FILE = "norms.npy"
CHUNKS_DIR = "chunks"
CLAIM_FILE = "completing.json"
PROJECTION_CHECK_FILE = "projection_check.json"

FEATURE_DTYPES = ("float16", "float32")

# What every chunk's marker says about how its features were made; equal across chunks, copied into meta.json.
_DESCRIBED = ("grad_dim", "proj_dim", "projector_description", "encoding")


class FeatureStore:
    """Chunks, merged arrays and provenance of one run's features."""

    def __init__(self, features_dir: Path) -> None:
        self.dir = Path(features_dir)
        self.chunks_dir = self.dir / CHUNKS_DIR
        self.meta_path = self.dir / META_FILE
        self._request_sha256: str | None = None
        self._valid: set[int] = set()  # chunks already found committed for this request

    # ---------------------------------------------------------------------------------------------- provenance
    def meta(self) -> dict[str, Any] | None:
        """The store's meta.json, or None when there is none."""
        return read_json(self.meta_path) if self.meta_path.is_file() else None

    def differing(self, request: dict[str, Any]) -> list[str]:
        """The keys of `request` whose stored value differs (empty when the store was made with this request)."""
        meta = self.meta()
        if meta is None:
            return []
        old = meta.get("request", {})
        return sorted(key for key in request.keys() | old.keys() if old.get(key) != request.get(key))

    def is_complete(self, request: dict[str, Any]) -> bool:
        meta = self.meta()
        return bool(meta and meta.get("complete") and not self.differing(request))

    def check_current(self, run_dir: Path, *, adapter_sha256: str | None, encoding_version: int,
                      records_sha256: str) -> None:
        """Refuse a complete store that no longer describes the run, naming the stage to rerun: made with another
        warm-up adapter (None: no adapter in the run, nothing to compare), another encoding of the records, or for
        other rows than the manifest's ok records."""
        meta = self.meta() or {}
        request = meta.get("request", {})
        if adapter_sha256 is not None and request.get("adapter_sha256") != adapter_sha256:
            raise TiveError(f"{self.dir}: made with another warm-up adapter than the run's (the warm-up was redone); "
                            f"rerun `tive features {run_dir} --force`")
        if request.get("encoding_version", 1) != encoding_version:
            raise TiveError(f"{self.dir}: made with encoding version {request.get('encoding_version', 1)}, not "
                            f"{encoding_version}; rerun `tive warmup {run_dir} --force`, then "
                            f"`tive features {run_dir} --force`")
        if meta.get("records_sha256") != records_sha256:
            raise TiveError(f"{self.dir}: made for other records than manifest.jsonl's ok records; rerun "
                            f"`tive features {run_dir} --force`")

    def start(self, request: dict[str, Any], force: bool, shared: bool) -> None:
        """Start or resume a store for `request`.

        Refuses a store made with another request unless `force` (then it is discarded). Chunks without a
        meta.json are discarded: nothing says what made them. `shared`: other processes may be writing the same
        store now, so nothing is discarded (a --force needs one process); leftover chunks are then still never
        used, because a chunk counts only when its marker carries this request's hash (`has_chunk`).
        """
        differing = self.differing(request)
        if differing and not force:
            raise TiveError(
                f"{self.dir}: holds features made with other {', '.join(differing)}; pass --force to discard them "
                "and recompute"
            )
        if (differing or force) and self.dir.exists():
            if shared:
                raise TiveError(
                    f"{self.dir}: --force with several processes would let them delete each other's work; remove "
                    f"{self.dir} once, then launch without --force"
                )
            shutil.rmtree(self.dir)
        if self.meta() is None and self.chunks_dir.is_dir() and not shared:
            shutil.rmtree(self.chunks_dir)  # leftovers of unknown provenance
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        if self.meta() is None:  # several ranks may write this at once: the same bytes
            write_json(self.meta_path, {"request": request, "complete": False})
        self._request_sha256 = sha256_json(request)
        self._valid = set()

    # -------------------------------------------------------------------------------------------------- chunks
    def _chunk_paths(self, chunk: int) -> tuple[Path, Path, Path]:
        stem = self.chunks_dir / f"chunk_{chunk:06d}"
        return Path(f"{stem}.x.npy"), Path(f"{stem}.norm.npy"), Path(f"{stem}.json")

    def request_sha256(self) -> str | None:
        """The hash of the request the store was started for (every chunk marker carries it)."""
        if self._request_sha256 is None:
            meta = self.meta()
            self._request_sha256 = sha256_json(meta["request"]) if meta and "request" in meta else None
        return self._request_sha256

    def has_chunk(self, chunk: int) -> bool:
        """Whether `chunk` is committed for this store's request (a marker left by another request does not count)."""
        expected = self.request_sha256()
        if chunk in self._valid:
            return True
        marker = self._chunk_paths(chunk)[2]
        if expected is None or not marker.is_file():
            return False
        try:
            made_for = read_json(marker).get("request_sha256")
        except (OSError, ValueError):
            return False
        if made_for == expected:
            self._valid.add(chunk)
            return True
        return False

    def missing_chunks(self, n_chunks: int) -> list[int]:
        return [chunk for chunk in range(n_chunks) if not self.has_chunk(chunk)]

    def write_chunk(self, chunk: int, features: np.ndarray, norms: np.ndarray, info: dict[str, Any]) -> None:
        """Commit one chunk: its arrays, then its marker (`info`: at least `rows`, the ok records' indices; what the
        process that computed it knows about the features — `grad_dim`, `projector`, `encoding`, `world` — goes
        there too: only the merge writes meta.json, so concurrent ranks never overwrite each other's updates)."""
        x_path, norm_path, marker = self._chunk_paths(chunk)
        if len(features) != len(info["rows"]) or len(norms) != len(info["rows"]):
            raise ValueError(f"chunk {chunk}: {len(features)} feature rows and {len(norms)} norms for "
                             f"{len(info['rows'])} records")
        for path, array in ((x_path, features), (norm_path, norms.astype(np.float64, copy=False))):
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
        write_json(marker, {**info, "request_sha256": self.request_sha256()})

    def chunk_world(self) -> int:
        """How many processes the launch that computed the committed chunks had (1 when none is committed)."""
        for marker in sorted(self.chunks_dir.glob("chunk_*.json")) if self.chunks_dir.is_dir() else []:
            try:
                return int(read_json(marker).get("world", 1))
            except (OSError, ValueError):
                continue
        return 1

    def chunk_info(self, chunk: int) -> dict[str, Any]:
        return read_json(self._chunk_paths(chunk)[2])

    # -------------------------------------------------------------------------------------- projection check
    def projection_check(self) -> dict[str, Any] | None:
        """The recorded decision on the dense projection's cost (`record_projection_check`), None before it."""
        path = self.dir / PROJECTION_CHECK_FILE
        try:
            return read_json(path)
        except (OSError, ValueError):
            return None

    def record_projection_check(self, check: dict[str, Any]) -> dict[str, Any]:
        """Record `check` unless a decision is already recorded; returns the one that stands (the first process's:
        created by a hard link, which fails where the name exists, so concurrent processes agree)."""
        path = self.dir / PROJECTION_CHECK_FILE
        private = self.dir / f".check.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
        private.write_text(json.dumps(check, indent=2) + "\n", encoding="utf-8")
        try:
            os.link(private, path)
        except FileExistsError:
            pass
        finally:
            private.unlink(missing_ok=True)
        return self.projection_check() or check

    def allow_projection(self) -> None:
        """Record that the user let a refused dense projection go on (--allow-slow-projection)."""
        check = self.projection_check()
        if check is not None and not check.get("allowed"):
            write_json(self.dir / PROJECTION_CHECK_FILE, {**check, "allowed": True})

    # ---------------------------------------------------------------------------------------------- completion
    @property
    def claim_path(self) -> Path:
        return self.dir / CLAIM_FILE

    def claim_completion(self, owner: dict[str, Any], stale_after: float) -> bool:
        """Claim the store's completion for `owner`; False when another process holds it.

        The claim is created atomically where NFS too creates atomically: a private file is hard-linked to
        `completing.json` (link fails when the name exists); a lost reply is recognised, as open(2) advises, by the
        private file's link count. A claim that `claim_is_abandoned` is first moved aside (a rename: one process
        wins it), then claimed again.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        private = self.dir / f".claim.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
        private.write_text(json.dumps({**owner, "claimed_at": time.time()}), encoding="utf-8")
        try:
            for attempt in range(2):
                try:
                    os.link(private, self.claim_path)
                    return True
                except FileExistsError:
                    if os.stat(private).st_nlink == 2:
                        return True
                if attempt or not self._take_over_abandoned(stale_after):
                    return False
            return False
        finally:
            private.unlink(missing_ok=True)

    def completion_claim(self) -> dict[str, Any] | None:
        """The owner named by the current claim, or None when nobody holds one."""
        try:
            return read_json(self.claim_path)
        except (OSError, ValueError):
            return None

    def claim_is_abandoned(self, stale_after: float) -> bool:
        """Whether the current claim's owner is gone: a process of this host that has ended, or a claim without a
        sign of progress (the owner touches it as it merges) for `stale_after` seconds, whose process cannot be
        checked from here or no longer answers."""
        claim = self.completion_claim()
        try:
            age = time.time() - self.claim_path.stat().st_mtime
        except OSError:
            return False
        if claim is None:
            return age > stale_after  # unreadable: judged by its age alone
        if claim.get("host") == socket.gethostname() and not _process_alive(int(claim.get("pid", -1))):
            return True
        return age > stale_after

    def _take_over_abandoned(self, stale_after: float) -> bool:
        """Move an abandoned claim aside (only one process's rename succeeds); True when this one did."""
        if not self.claim_is_abandoned(stale_after):
            return False
        try:
            os.rename(self.claim_path, self.dir / f".abandoned.{uuid.uuid4().hex}")
        except FileNotFoundError:
            return False
        return True

    def release_completion(self, owner: dict[str, Any]) -> None:
        """Remove the claim if `owner` holds it."""
        claim = self.completion_claim()
        if claim is not None and claim.get("token") == owner.get("token"):
            self.claim_path.unlink(missing_ok=True)
        for leftover in self.dir.glob(".abandoned.*"):
            leftover.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        """Show the claim's owner is making progress."""
        try:
            os.utime(self.claim_path)
        except OSError:
            pass

    # --------------------------------------------------------------------------------------------------- merge
    def merge(self, chunk_records: Sequence[Sequence[int]], dtype: str, completed_by: dict[str, Any] | None = None,
              before_complete: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Concatenate every chunk into features.npy / norms.npy, mark the store complete, remove the chunks.

        Args:
            chunk_records: per chunk, the indices of its candidate records (what the chunk must account for).
            dtype: the stored feature dtype.
            completed_by: the owner of the completion claim (recorded in meta.json).
            before_complete: called with the complete meta.json once the arrays are in place and before it is
                written (the caller brings the manifest up to date there: a complete store is a synced one).

        Returns:
            The complete meta.json, with `records` (rows), `records_sha256` (of their indices), `skipped`
            (index → reason), `truncated_records` and, per chunk, who computed it, where, with which batch size
            and how long it took.

        Raises:
            TiveError: a chunk is missing, or its files do not fit its records (then recompute with --force).
        """
        infos = []
        for chunk, records in enumerate(chunk_records):
            if not self.has_chunk(chunk):
                raise TiveError(f"{self.chunks_dir}: chunk {chunk} is missing; run `tive features` to compute it")
            info = self.chunk_info(chunk)
            accounted = sorted(list(info["rows"]) + [int(i) for i in info.get("skipped", {})])
            if accounted != sorted(records):
                raise TiveError(
                    f"{self._chunk_paths(chunk)[2]}: accounts for other records than chunk {chunk} holds; the "
                    "store is inconsistent: rerun `tive features` with --force"
                )
            infos.append(info)
        described = {key: infos[0].get(key) for key in _DESCRIBED}
        for chunk, info in enumerate(infos):
            if any(info.get(key) != value for key, value in described.items()):
                raise TiveError(
                    f"{self._chunk_paths(chunk)[2]}: made with another model or projection than chunk 0 (gradient "
                    "size, projector or encoding differ); the store is inconsistent: rerun `tive features` with --force"
                )
        proj_dim = int(described["proj_dim"])
        n_rows = sum(len(info["rows"]) for info in infos)
        np_dtype = np.dtype(dtype)
        with atomic_path(self.dir / FEATURES_FILE) as tmp_x, atomic_path(self.dir / NORMS_FILE) as tmp_n:
            features = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np_dtype, shape=(n_rows, proj_dim))
            norms = np.lib.format.open_memmap(tmp_n, mode="w+", dtype=np.float64, shape=(n_rows,))
            row = 0
            for chunk, info in enumerate(infos):
                x_path, norm_path, _ = self._chunk_paths(chunk)
                x, n = np.load(x_path, mmap_mode="r"), np.load(norm_path)
                expected = (len(info["rows"]), proj_dim)
                if x.shape != expected or x.dtype != np_dtype or n.shape != expected[:1]:
                    raise TiveError(
                        f"{x_path}: shape {x.shape} {x.dtype} with {n.shape[0]} norms, expected {expected} "
                        f"{np_dtype}; the store is inconsistent: rerun `tive features` with --force"
                    )
                features[row : row + len(x)] = x
                norms[row : row + len(n)] = n
                row += len(x)
                self._heartbeat()
            features.flush()
            norms.flush()
            del features, norms
        skipped = {str(i): reason for info in infos for i, reason in info.get("skipped", {}).items()}
        check = self.projection_check()
        complete = {
            **(self.meta() or {}),
            **described,
            "shards": max(int(info.get("world", 1)) for info in infos),
            "records": n_rows,
            "records_sha256": sha256_json([int(i) for info in infos for i in info["rows"]]),
            "skipped": dict(sorted(skipped.items(), key=lambda kv: int(kv[0]))),
            "truncated_records": sum(len(info.get("truncated", [])) for info in infos),
            "chunks": [
                {"chunk": chunk, **{key: info[key] for key in ("computed_by", "device", "batch_size", "seconds")
                                    if key in info}}
                for chunk, info in enumerate(infos)
            ],
            **({"projection_check": check} if check is not None else {}),
            **({"completed_by": {key: completed_by[key] for key in ("process", "host", "pid", "token")}}
               if completed_by else {}),
            "complete": True,
        }
        if before_complete is not None:
            before_complete(complete)
        write_json(self.meta_path, complete)  # last: the store's completion marker
        shutil.rmtree(self.chunks_dir, ignore_errors=True)
        return complete


def _process_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_features(features_dir: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map features.npy and load norms.npy, checking they have `n_rows` rows (the ok records)."""
    x_path, n_path = features_dir / FEATURES_FILE, features_dir / NORMS_FILE
    for path in (x_path, n_path):
        if not path.is_file():
            raise TiveError(f"{path}: missing; run `tive features` first (or put your own features there)")
    features = np.load(x_path, mmap_mode="r")
    norms = np.load(n_path)
    if features.ndim != 2 or features.shape[0] != n_rows:
        raise TiveError(
            f"{x_path}: shape {features.shape}, expected ({n_rows}, dim): one row per ok record of manifest.jsonl"
        )
    if norms.shape != (n_rows,):
        raise TiveError(f"{n_path}: shape {norms.shape}, expected ({n_rows},): one norm per ok record")
    return features, norms
