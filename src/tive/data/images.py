"""Checking that every image a record uses exists, is readable and lies inside the image root.

The check runs once, before any model work, so a wrong `--images` directory or a broken file is reported in
seconds instead of hours into feature extraction. Paths are confined to the image root: a dataset is untrusted
input, and a path such as `../../home/me/.ssh/id_rsa` or a symlink out of the root must never be opened.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Generator

from tive.data.formats import Dataset
from tive.data.records import Record
from tive.errors import DataError, TiveError

ON_MISSING_CHOICES = ("error", "skip")

# Above this many distinct files the check takes long enough to deserve a progress bar.
_PROGRESS_THRESHOLD = 2000

_MISSING_HINT = "fix the path or pass --on-missing-image skip"
_ESCAPE_HINT = "put the images under --images and refer to them by paths relative to it"


def check_images(dataset: Dataset, image_root: Path | str | None, on_missing: str = "error") -> None:
    """Resolve, confine and verify every image of every ok record.

    Each distinct file is opened once with Pillow and `Image.verify()`ed (any format Pillow reads, whatever the
    file's extension), because real datasets reuse the same image across many records. On success each ok
    record's `image_paths` holds its resolved paths.

    Args:
        dataset: the loaded input; its records' `status` and `image_paths` are updated in place.
        image_root: the directory the record paths are relative to (`--images`). Relative paths are joined to
            it; absolute paths are accepted only when they lie inside it.
        on_missing: "error" to stop at the first missing or unreadable image, "skip" to mark such records
            `skipped: ...` and carry on.

    Raises:
        ValueError: `on_missing` is not "error" or "skip".
        TiveError: records have images but no image root was given, or the root is not a directory.
        DataError: a path leaves the image root (always), or with on_missing="error" an image is missing or
            unreadable.
    """
    if on_missing not in ON_MISSING_CHOICES:
        raise ValueError(f"on_missing must be one of {ON_MISSING_CHOICES}, got {on_missing!r}")

    with_images = [record for record in dataset.records if record.ok and record.images]
    if not with_images:
        return
    if image_root is None:
        raise TiveError(
            f"{dataset.path}: {len(with_images)} record(s) use images but no image directory was given; "
            "pass --images DIR (the directory the records' image paths are relative to)"
        )
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise TiveError(f"{root}: the image directory does not exist or is not a directory (check --images)")
    root = root.resolve()

    # Pass 1: resolve and confine every path before opening any file, so an escaping path is refused
    # regardless of --on-missing-image. Remember the first record that uses each distinct file.
    resolved_by_record: list[tuple[Record, list[Path]]] = []
    first_user: dict[Path, tuple[Record, str]] = {}
    for record in with_images:
        paths = []
        for written in record.images:
            resolved = _resolve_inside(dataset, record, root, written)
            paths.append(resolved)
            first_user.setdefault(resolved, (record, written))
        resolved_by_record.append((record, paths))

    # Pass 2: check each distinct file once, in order of first use, so that in "error" mode the reported record
    # is the earliest one with a bad image.
    problems: dict[Path, str] = {}
    # closing(): stop the worker threads and the progress bar at once when an error leaves the loop.
    with closing(_check_files(list(first_user))) as results:
        for resolved, problem in results:
            if problem is None:
                continue
            kind, reason = problem
            if on_missing == "error":
                record, written = first_user[resolved]
                if kind == "missing":
                    message = f"image {written!r} not found (resolved to {resolved})"
                else:
                    message = f"image {written!r} (resolved to {resolved}) is not a readable image: {reason}"
                raise DataError(dataset.path, record.index, record.record_id, "image", message, _MISSING_HINT)
            if kind == "missing":
                problems[resolved] = f"missing image {resolved}"
            else:
                problems[resolved] = f"unreadable image {resolved}: {reason}"

    # Pass 3: per-record outcome.
    for record, paths in resolved_by_record:
        bad = next((path for path in paths if path in problems), None)
        if bad is None:
            record.image_paths = paths
        else:
            record.status = f"skipped: {problems[bad]}"


def _resolve_inside(dataset: Dataset, record: Record, root: Path, written: str) -> Path:
    """Resolve a record's image path under `root` and refuse it if it ends up outside."""
    candidate = Path(written)
    if not candidate.is_absolute():
        candidate = root / candidate
    # resolve() follows symlinks, so a link inside the root that points outside is caught as well.
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(
            dataset.path,
            record.index,
            record.record_id,
            "image",
            f"image {written!r} resolves to {resolved}, outside the image directory {root}; refused",
            _ESCAPE_HINT,
        )
    return resolved


def _check_files(paths: list[Path]) -> Generator[tuple[Path, tuple[str, str] | None], None, None]:
    """Yield (path, problem) for each path, in order; problem is None for a readable image.

    Files are checked by a small thread pool because the work is mostly waiting on the file system (network
    storage in particular). Work is submitted in windows so that millions of paths do not become millions of
    pending futures.
    """
    progress = None
    if len(paths) > _PROGRESS_THRESHOLD:
        from tqdm import tqdm

        progress = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr)
    workers = min(16, (os.cpu_count() or 1) * 2)
    window = 64 * workers
    try:
        if len(paths) <= 1:
            for path in paths:
                yield path, _problem(path)
            return
        executor = ThreadPoolExecutor(max_workers=workers)
        try:
            for start in range(0, len(paths), window):
                batch = paths[start : start + window]
                for path, problem in zip(batch, executor.map(_problem, batch)):
                    if progress is not None:
                        progress.update(1)
                    yield path, problem
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    finally:
        if progress is not None:
            progress.close()


def _problem(path: Path) -> tuple[str, str] | None:
    """("missing" | "unreadable", reason) when `path` is not a usable image, None when Pillow can read it."""
    if not path.is_file():
        return ("missing", "no such file")
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # Pillow raises many kinds: OSError, SyntaxError, ValueError, DecompressionBombError
        return ("unreadable", str(err) or type(err).__name__)
    return None
