"""Task values and instance values: the two scores TIVE selects by.

A task's value is how hard the reference model finds it (the mean gradient norm of its records); an
instance's value is how representative its gradient is of its task (the mean cosine similarity of its
projected gradient to every gradient of the same task, itself included).

The instance value uses the identity ``mean_j cos(x_r, x_j) = x̂_r · mean_j x̂_j`` (x̂ the unit-normalised
rows), so it costs O(n·d) instead of the authors' O(n²·d) pairwise matrix, and it streams the feature matrix
in row chunks, each pass one matrix product, so that a memory-mapped store of any size is scored at the speed
of reading it. The pairwise definition is kept as
:func:`instance_values_pairwise` so tests and checkers can compare the two.

Only numpy and the standard library are imported here, so scoring runs and is tested without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tive.errors import TiveError

__all__ = ["task_values", "instance_values", "instance_values_pairwise"]


def _task_ids(tasks: Sequence[str], n: int, what: str) -> tuple[list[str], np.ndarray]:
    """Map task names to dense integer ids.

    Args:
        tasks: one task name per row.
        n: the number of rows the caller expects.
        what: the name of the array the rows belong to, for the error message.

    Returns:
        The sorted distinct task names and, per row, the position of its task in that list (int64).

    Raises:
        TiveError: if ``tasks`` does not have exactly ``n`` entries.
    """
    if len(tasks) != n:
        raise TiveError(
            f"{what} has {n} rows but {len(tasks)} task names were given; "
            "pass exactly one task name per row, in the same order"
        )
    names = sorted({str(t) for t in tasks})
    position = {name: i for i, name in enumerate(names)}
    ids = np.fromiter((position[str(t)] for t in tasks), dtype=np.int64, count=n)
    return names, ids


def task_values(tasks: Sequence[str], grad_norms: np.ndarray) -> dict[str, float]:
    """Compute each task's value: the mean full-gradient norm of its records.

    Harder tasks (larger gradients under the reference model) get larger values and therefore a larger
    share of the selection budget.

    Args:
        tasks: the task of each record; only the records that should count (status ok) are passed.
        grad_norms: the L2 norm of each record's full gradient, one per entry of ``tasks``.

    Returns:
        Task name -> mean gradient norm, with names in sorted order.

    Raises:
        TiveError: if the lengths differ, ``grad_norms`` is not one-dimensional, or a norm is non-finite or
            negative (the message names the first such row).
    """
    norms = np.asarray(grad_norms, dtype=np.float64)
    if norms.ndim != 1:
        raise TiveError(f"grad_norms must be one-dimensional (one norm per record), got shape {norms.shape}")
    names, ids = _task_ids(tasks, norms.shape[0], "grad_norms")
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < 0))
    if bad.size:
        row = int(bad[0])
        raise TiveError(
            f"grad_norm of row {row} (task {str(tasks[row])!r}) is {norms[row]!r}; gradient norms must be "
            f"finite and non-negative ({bad.size} bad row(s) in all). Re-extract the features of these records "
            "or mark them as failed so they are left out"
        )
    sums = np.bincount(ids, weights=norms, minlength=len(names))
    counts = np.bincount(ids, minlength=len(names))
    return {name: float(sums[i] / counts[i]) for i, name in enumerate(names)}


def _compute_dtype(features: np.ndarray) -> type:
    """float32 for float16 features (their storage error, ~1e-3 relative, is far above float32's rounding; float16
    conversion and float32 products halve the cost at 665K x 8192), float64 otherwise."""
    return np.float32 if getattr(features, "dtype", None) == np.float16 else np.float64


def _chunk_norms(chunk: np.ndarray, start: int) -> np.ndarray:
    """1 / ||row|| of each row of a chunk, in float64 (0 for a zero row).

    Raises:
        TiveError: if a row holds a non-finite number (it makes the row's squared norm non-finite).
    """
    squared = np.einsum("ij,ij->i", chunk, chunk).astype(np.float64)
    finite = np.isfinite(squared)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise TiveError(
            f"feature row {row} holds a non-finite value (NaN or inf); re-extract the features of that record "
            "or leave it out of scoring"
        )
    inverse = np.zeros_like(squared)
    np.divide(1.0, np.sqrt(squared), out=inverse, where=squared > 0)
    return inverse


def instance_values(features: np.ndarray, tasks: Sequence[str], chunk_rows: int = 4096) -> np.ndarray:
    """Compute each record's instance value: its mean cosine similarity to the records of its task.

    s_r = mean over j in task(r), j = r included, of cos(x_r, x_j), computed as x̂_r · mean_j x̂_j in two
    streaming passes over row chunks, each one matrix product (BLAS): the first sums the normalised rows per task
    (a (tasks x rows) matrix of inverse norms times the chunk), the second takes every row's dot products with
    the task means and keeps its own task's. Products are float64 for float32/float64 features and float32 for
    float16 ones (whose own rounding is ~1e-3; the values then agree with float64 arithmetic to ~1e-6); sums
    across chunks and the results are float64. A zero row
    has cosine 0 with everything (itself included) and counts as a zero vector in its task's mean, exactly as
    in :func:`instance_values_pairwise`.

    Args:
        features: the projected gradients, shape (n, d); may be a read-only ``np.memmap`` (float32 or
            float16) that is never loaded whole.
        tasks: the task of each row.
        chunk_rows: rows read at a time; peak extra memory is about ``chunk_rows * d * 8`` bytes.

    The two passes read the features twice; a memory-mapped store is read from the page cache the second time
    when it fits there.

    Returns:
        float64 array of shape (n,), values in [-1, 1].

    Raises:
        TiveError: if ``features`` is not two-dimensional, ``tasks`` has the wrong length, ``chunk_rows`` is
            not positive, or a row holds a non-finite value.
    """
    shape = tuple(getattr(features, "shape", ()))
    if len(shape) != 2:
        raise TiveError(f"features must be a matrix of shape (records, dim), got shape {shape}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise TiveError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    n, d = shape
    names, ids = _task_ids(tasks, n, "features")
    if n == 0:
        return np.zeros(0, dtype=np.float64)

    dtype = _compute_dtype(features)
    inverse_norms = np.empty(n, dtype=np.float64)
    sums = np.zeros((len(names), d), dtype=np.float64)
    weights = np.zeros((len(names), min(chunk_rows, n)), dtype=dtype)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        chunk = np.asarray(features[start:stop], dtype=dtype)
        inverse = _chunk_norms(chunk, start)
        inverse_norms[start:stop] = inverse
        rows = np.arange(stop - start)
        weights[:, : stop - start] = 0.0
        weights[ids[start:stop], rows] = inverse
        sums += weights[:, : stop - start] @ chunk
    means = (sums / np.bincount(ids, minlength=len(names))[:, None]).astype(dtype)

    values = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        chunk = np.asarray(features[start:stop], dtype=dtype)
        dots = chunk @ means.T
        values[start:stop] = dots[np.arange(stop - start), ids[start:stop]] * inverse_norms[start:stop]
    return values


def instance_values_pairwise(features: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    """Compute instance values from their definition, with the full cosine matrix of each task.

    O(n_t² · d) time and O(n_t²) memory per task: meant for tests and for checking
    :func:`instance_values`, not for real data.

    Args:
        features: the projected gradients, shape (n, d).
        tasks: the task of each row.

    Returns:
        float64 array of shape (n,).

    Raises:
        TiveError: if ``features`` is not two-dimensional or ``tasks`` has the wrong length.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise TiveError(f"features must be a matrix of shape (records, dim), got shape {x.shape}")
    names, ids = _task_ids(tasks, x.shape[0], "features")
    norms = np.linalg.norm(x, axis=1)
    values = np.zeros(x.shape[0], dtype=np.float64)
    for task_id in range(len(names)):
        rows = np.flatnonzero(ids == task_id)
        block = x[rows]
        block_norms = norms[rows]
        cos = block @ block.T
        denom = np.outer(block_norms, block_norms)
        cos = np.divide(cos, denom, out=np.zeros_like(cos), where=denom > 0)
        values[rows] = cos.mean(axis=1)
    return values
