"""The feature store: per-chunk files committed atomically, merged into memory-mappable arrays.

    features/meta.json                    provenance; "complete": true once merged (written last)
    features/chunks/chunk_000003.x.npy    projected gradients of rows [3*chunk_size, 4*chunk_size)
    features/chunks/chunk_000003.norm.npy their unprojected L2 norms (written second: the chunk's marker)
    features/features.npy                 all rows (float32, rows = ok manifest records in manifest order)
    features/norms.npy                    all norms (float64)

A killed run leaves at most temporary files; a rerun with the same provenance recomputes only chunks whose
marker is missing, and the merged arrays are byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tive.errors import TiveError
from tive.io import atomic_path, read_json, write_json

META_FILE = "meta.json"
FEATURES_FILE = "features.npy"
NORMS_FILE = "norms.npy"
CHUNKS_DIR = "chunks"

# Keys of meta.json that must match for stored features to be reused.
PROVENANCE_KEYS = (
    "model_fingerprint", "adapter_sha256", "projector", "grad_dim", "grad_mode", "records_sha256", "chunk_size"
)


class FeatureStore:
    """Chunks and merged arrays of one run's features."""

    def __init__(self, features_dir: Path) -> None:
        self.dir = features_dir
        self.chunks_dir = features_dir / CHUNKS_DIR

    def open(self, meta: dict[str, Any], force: bool) -> bool:
        """Start or resume a store with provenance `meta`. Returns True when merged features already exist.

        Refuses stored features with other provenance unless `force`, in which case they are deleted.
        """
        meta_path = self.dir / META_FILE
        if meta_path.is_file():
            old = read_json(meta_path)
            differing = [key for key in PROVENANCE_KEYS if old.get(key) != meta.get(key)]
            if differing and not force:
                raise TiveError(
                    f"{self.dir}: holds features made with other {', '.join(differing)}; "
                    "pass --force to discard them and recompute"
                )
            if differing:
                shutil.rmtree(self.dir)
            elif old.get("complete"):
                return True
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, {**meta, "complete": False})
        return False

    def _chunk_paths(self, chunk: int) -> tuple[Path, Path]:
        stem = self.chunks_dir / f"chunk_{chunk:06d}"
        return stem.with_suffix(".x.npy"), stem.with_suffix(".norm.npy")

    def has_chunk(self, chunk: int) -> bool:
        return self._chunk_paths(chunk)[1].is_file()

    def write_chunk(self, chunk: int, features: np.ndarray, norms: np.ndarray) -> None:
        x_path, norm_path = self._chunk_paths(chunk)
        with atomic_path(x_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, features.astype(np.float32, copy=False))
        with atomic_path(norm_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, norms.astype(np.float64, copy=False))

    def merge(self, n_chunks: int, n_rows: int, proj_dim: int, meta: dict[str, Any]) -> None:
        """Concatenate all chunks into features.npy / norms.npy, then mark the store complete."""
        with atomic_path(self.dir / FEATURES_FILE) as tmp_x, atomic_path(self.dir / NORMS_FILE) as tmp_n:
            features = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np.float32, shape=(n_rows, proj_dim))
            norms = np.lib.format.open_memmap(tmp_n, mode="w+", dtype=np.float64, shape=(n_rows,))
            row = 0
            for chunk in range(n_chunks):
                x_path, norm_path = self._chunk_paths(chunk)
                x, n = np.load(x_path), np.load(norm_path)
                features[row : row + len(x)] = x
                norms[row : row + len(n)] = n
                row += len(x)
            if row != n_rows:
                raise TiveError(f"{self.chunks_dir}: chunks hold {row} rows, expected {n_rows}; rerun with --force")
            features.flush()
            norms.flush()
            del features, norms
        write_json(self.dir / META_FILE, {**meta, "complete": True})


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
