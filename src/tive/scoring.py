"""Task values and instance values: the two scores TIVE selects by.

A task's value is how hard the reference model finds it (the mean gradient norm of its records); an
instance's value is how representative its gradient is of its task (the mean cosine similarity of its
projected gradient to every gradient of the same task, itself included).

The instance value uses the identity ``mean_j cos(x_r, x_j) = x̂_r · mean_j x̂_j`` (x̂ the unit-normalised
rows), so it costs O(n·d) instead of the authors' O(n²·d) pairwise matrix, and it streams the feature matrix
in row chunks so that a memory-mapped store of any size can be scored. The pairwise definition is kept as
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


def _normalised_chunk(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Read rows ``start:stop`` as float64 and scale each to unit length (a zero row stays zero).

    Raises:
        TiveError: if a row holds a non-finite number.
    """
    chunk = np.array(features[start:stop], dtype=np.float64)
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise TiveError(
            f"feature row {row} holds a non-finite value (NaN or inf); re-extract the features of that record "
            "or leave it out of scoring"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    np.divide(chunk, norms[:, None], out=chunk, where=norms[:, None] > 0)
    return chunk


def _task_slices(chunk_ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Group a chunk's rows by task.

    Returns:
        A stable order of the chunk's rows sorted by task id, and for each task present the triple
        (task id, start, stop) of its rows' positions in that order.
    """
    order = np.argsort(chunk_ids, kind="stable")
    sorted_ids = chunk_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    stops = np.r_[starts[1:], sorted_ids.size]
    return order, [(int(sorted_ids[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def instance_values(features: np.ndarray, tasks: Sequence[str], chunk_rows: int = 16384) -> np.ndarray:
    """Compute each record's instance value: its mean cosine similarity to the records of its task.

    s_r = mean over j in task(r), j = r included, of cos(x_r, x_j), computed as x̂_r · mean_j x̂_j in two
    streaming passes over row chunks: the first sums the normalised rows per task, the second takes each
    row's dot product with its task's mean. All arithmetic is float64 whatever the storage dtype. A zero row
    has cosine 0 with everything (itself included) and counts as a zero vector in its task's mean, exactly as
    in :func:`instance_values_pairwise`.

    Args:
        features: the projected gradients, shape (n, d); may be a read-only ``np.memmap`` (float32 or
            float16) that is never loaded whole.
        tasks: the task of each row.
        chunk_rows: rows read at a time; peak extra memory is about ``chunk_rows * d * 16`` bytes.

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

    sums = np.zeros((len(names), d), dtype=np.float64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        chunk = _normalised_chunk(features, start, stop)
        order, groups = _task_slices(ids[start:stop])
        grouped = chunk[order]
        for task_id, a, b in groups:
            sums[task_id] += grouped[a:b].sum(axis=0)
    means = sums / np.bincount(ids, minlength=len(names))[:, None]

    values = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        chunk = _normalised_chunk(features, start, stop)
        order, groups = _task_slices(ids[start:stop])
        out = values[start:stop]
        for task_id, a, b in groups:
            rows = order[a:b]
            out[rows] = chunk[rows] @ means[task_id]
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
