"""Checking that every image a record uses exists, is readable and lies inside the image root; opening images.

The check runs once, before any model work, so a wrong `--images` directory or a broken file is reported in
seconds instead of hours into feature extraction. Paths are confined to the image root: a dataset is untrusted
input, and a path such as `../../home/me/.ssh/id_rsa` or a symlink out of the root must never be opened.

An image is a file (resolved under the root), embedded bytes (Parquet / `datasets` Image values, `data:` URLs:
no root needed), or a remote `http(s)://` URL, which is never fetched: tive works offline, so such a record is an
error, or skipped with `on_missing="skip"`. `open_images(record)` is what the model side calls to get a record's
images as PIL images, whatever they are stored as.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Hashable

from tive.badrecords import BadRecords, check_policy
from tive.data.formats import Dataset
from tive.data.records import EmbeddedImage, Record
from tive.data.shapes import is_remote_url
from tive.errors import DataError, TiveError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# Above this many distinct images the check takes long enough to deserve a progress bar.
_PROGRESS_THRESHOLD = 2000

_MISSING_HINT = "fix the path or pass --on-bad-record skip"
_EMBEDDED_HINT = "fix or remove the image bytes in the dataset, or pass --on-bad-record skip"
_REMOTE_HINT = (
    "download the images and refer to them by paths under --images (or embed them as data: URLs), "
    "or pass --on-bad-record skip"
)
_ESCAPE_HINT = "put the images under --images and refer to them by paths relative to it"


@dataclass(frozen=True)
class _Remote:
    """A remote image URL (never fetched)."""

    url: str


@dataclass(frozen=True)
class _Invalid:
    """An image reference that is not a usable path (a NUL byte, ...)."""

    written: str
    reason: str


def check_images(
    dataset: Dataset, image_root: Path | str | None, on_missing: str = "error", max_bad_fraction: float = 1.0
) -> BadRecords:
    """Resolve, confine and check every image of every ok record.

    Each distinct file is opened once with Pillow and checked (`_problem`: any format Pillow reads, whatever the
    file's extension; a JPEG cut short is caught by its missing end marker and a draft decode), because real
    datasets reuse the same image across many records; each embedded image is checked from its bytes the same
    way. A remote URL is not fetched and counts as missing. On success each ok record's `image_paths` holds, per
    image, its resolved path (None for an embedded image).

    Args:
        dataset: the loaded input; its records' `status` and `image_paths` are updated in place.
        image_root: the directory the record paths are relative to (`--images`). Relative paths are joined to
            it; absolute paths are accepted only when they lie inside it. Not needed when every image is
            embedded.
        on_missing: "error" to stop at the first missing, remote or unreadable image, "skip" to mark such
            records `skipped: ...` and carry on (`--on-bad-record`).
        max_bad_fraction: with "skip", the share of the records with images that may be skipped before the check
            stops (see `tive.badrecords`): a wrong image root stops, it does not skip everything.

    Returns:
        The skipped records and their reasons.

    Raises:
        TiveError: records have file images but no image root was given, the root is not a directory, or (with
            "skip") too many records have bad images.
        DataError: a path leaves the image root (always), or with on_missing="error" an image is missing,
            remote, unreadable or its path is not a valid path; the field is the one the image came from
            (`image`, `images`, `messages[0].content[1].image_url`, ...).
    """
    check_policy(on_missing, max_bad_fraction)
    with_images = [record for record in dataset.records if record.ok and record.images]
    bad = BadRecords("prepare", dataset.path, on_missing, max_bad_fraction, len(with_images))
    if not with_images:
        return bad
    root = _image_root(dataset, with_images, image_root)

    # Pass 1: resolve and confine every path before opening any file, so an escaping path is refused
    # regardless of --on-bad-record. Remember the first record that uses each distinct image.
    keys_by_record: list[tuple[Record, list[Hashable]]] = []
    users: dict[Hashable, list[tuple[Record, int]]] = {}
    for record in with_images:
        keys = _image_keys(dataset, record, root)
        for position, key in enumerate(keys):
            users.setdefault(key, []).append((record, position))
        keys_by_record.append((record, keys))

    # Pass 2: check each distinct image once, in order of first use, so that in "error" mode the reported record
    # is the earliest one with a bad image; in "skip" mode every record using a bad image is counted as it is found.
    problems: dict[Hashable, str] = {}
    # closing(): stop the worker threads and the progress bar at once when an error leaves the loop.
    with closing(_check_files(list(users))) as results:
        for key, problem in results:
            if problem is not None:
                problems[key] = _skip_reason(key, problem)
                for record, position in users[key]:
                    message, hint = _error_message(key, record.images[position], problem)
                    bad.fail(record.index, record.record_id, record.image_field(position),
                             message if on_missing == "error" else problems[key], hint)
            bad.done(len(users[key]))

    # Pass 3: per-record outcome.
    for record, keys in keys_by_record:
        failed = next((key for key in keys if key in problems), None)
        if failed is None:
            record.image_paths = [key if isinstance(key, Path) else None for key in keys]
        else:
            record.status = f"skipped: {problems[failed]}"
    return bad


def resolve_image_paths(dataset: Dataset, image_root: Path | str | None) -> None:
    """Set `image_paths` of every ok record with images, as `check_images` does, without opening any image.

    For re-reading an input whose images were already checked (a later stage): the same confinement rules
    apply. Remote URLs cannot occur in ok records after the check; they are refused here too.

    Raises:
        TiveError: records have file images but no image root was given, or the root is not a directory.
        DataError: a path leaves the image root, or an ok record has a remote URL.
    """
    with_images = [record for record in dataset.records if record.ok and record.images]
    if not with_images:
        return
    root = _image_root(dataset, with_images, image_root)
    for record in with_images:
        keys = _image_keys(dataset, record, root)
        for position, key in enumerate(keys):
            if isinstance(key, (_Remote, _Invalid)):
                message, hint = _error_message(key, record.images[position], ("invalid", ""))
                raise DataError(
                    dataset.path, record.index, record.record_id, record.image_field(position), message, hint
                )
        record.image_paths = [key if isinstance(key, Path) else None for key in keys]


def open_image(record: Record, position: int) -> Any:
    """What `PIL.Image.open` takes for the record's image at `position`: its resolved file, or its embedded bytes.

    Raises:
        TiveError: a file image has no resolved path (the check was not run, or the record was skipped).
    """
    embedded = record.embedded_image(position)
    if embedded is not None:
        return io.BytesIO(embedded.read())
    path = record.image_paths[position] if position < len(record.image_paths) else None
    if path is None:
        raise TiveError(
            f"record {record.index}: image {record.images[position]!r} has no resolved path; "
            "run check_images (or resolve_image_paths) on the dataset first"
        )
    return path


def open_images(record: Record) -> list[PILImage]:
    """The record's images, in order, as RGB PIL images: embedded bytes decoded, files opened.

    File images are opened from `record.image_paths`, so run `check_images` (or `resolve_image_paths`) first. An
    image that cannot be decoded raises what Pillow raises (OSError for a truncated file, ...): the caller decides
    whether that skips the record.
    """
    from PIL import Image

    images = []
    for position in range(len(record.images)):
        with Image.open(open_image(record, position)) as image:
            images.append(image.convert("RGB"))
    return images


def _image_root(dataset: Dataset, with_images: list[Record], image_root: Path | str | None) -> Path | None:
    """The resolved image root; required only when some record has a file image."""
    with_files = sum(1 for record in with_images if any(_is_file_image(record, i) for i in range(len(record.images))))
    if image_root is None:
        if with_files:
            raise TiveError(
                f"{dataset.path}: {with_files} record(s) use image files but no image directory was given; "
                "pass --images DIR (the directory the records' image paths are relative to)"
            )
        return None
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise TiveError(f"{root}: the image directory does not exist or is not a directory (check --images)")
    return root.resolve()


def _is_file_image(record: Record, position: int) -> bool:
    return record.embedded_image(position) is None and not is_remote_url(record.images[position])


def _image_keys(dataset: Dataset, record: Record, root: Path | None) -> list[Hashable]:
    """Per image: its resolved Path, its EmbeddedImage, or a _Remote URL."""
    keys: list[Hashable] = []
    for position, written in enumerate(record.images):
        embedded = record.embedded_image(position)
        if embedded is not None:
            keys.append(embedded)
        elif is_remote_url(written):
            keys.append(_Remote(written))
        else:
            assert root is not None  # _image_root requires a root when there are file images
            keys.append(_resolve_inside(dataset, record, position, root, written))
    return keys


def _error_message(key: Hashable, written: str, problem: tuple[str, str]) -> tuple[str, str]:
    """(message, hint) for the DataError of a bad image."""
    kind, reason = problem
    if isinstance(key, _Remote):
        return (
            f"image {written!r} is a remote URL; tive works offline and never downloads images",
            _REMOTE_HINT,
        )
    if isinstance(key, _Invalid):
        return f"image {written!r} is not a valid path: {key.reason}", _MISSING_HINT
    if isinstance(key, EmbeddedImage):
        return f"embedded image {written!r} is not a readable image: {reason}", _EMBEDDED_HINT
    if kind == "missing":
        return f"image {written!r} not found (resolved to {key})", _MISSING_HINT
    return f"image {written!r} (resolved to {key}) is not a readable image: {reason}", _MISSING_HINT


def _skip_reason(key: Hashable, problem: tuple[str, str]) -> str:
    """The status reason of a record skipped for this image."""
    kind, reason = problem
    if isinstance(key, _Remote):
        return f"remote image {key.url} (not fetched offline)"
    if isinstance(key, _Invalid):
        return f"invalid image path {key.written!r} ({key.reason})"
    if isinstance(key, EmbeddedImage):
        return f"unreadable embedded image {key.name or '<embedded image>'}: {reason}"
    if kind == "missing":
        return f"missing image {key}"
    return f"unreadable image {key}: {reason}"


def _resolve_inside(dataset: Dataset, record: Record, position: int, root: Path, written: str) -> Path | _Invalid:
    """Resolve a record's image path under `root` and refuse it if it ends up outside; `_Invalid` when it is not a
    path at all."""
    if "\0" in written:
        return _Invalid(written, "it holds a NUL byte")
    candidate = Path(written)
    if not candidate.is_absolute():
        candidate = root / candidate
    # resolve() follows symlinks, so a link inside the root that points outside is caught as well.
    try:
        resolved = candidate.resolve()
    except (OSError, ValueError) as err:  # a path the OS refuses (too long, a loop of links, ...)
        return _Invalid(written, str(err) or type(err).__name__)
    if not resolved.is_relative_to(root):
        raise DataError(
            dataset.path,
            record.index,
            record.record_id,
            record.image_field(position),
            f"image {written!r} resolves to {resolved}, outside the image directory {root}; refused",
            _ESCAPE_HINT,
        )
    return resolved


def _check_files(paths: list[Any]) -> Generator[tuple[Any, tuple[str, str] | None], None, None]:
    """Yield (image, problem) for each image key, in order; problem is None for a readable image.

    Files are checked by a small thread pool because the work is mostly waiting on the file system (network
    storage in particular). Work is submitted in windows so that millions of paths do not become millions of
    pending futures.
    """
    progress = None
    if len(paths) > _PROGRESS_THRESHOLD:
        from tive.progress import Progress

        progress = Progress("checking images", len(paths), "img")
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


def _problem(key: Any) -> tuple[str, str] | None:
    """("missing" | "unreadable" | "remote", reason) when the image is not usable, None when Pillow can read it."""
    if isinstance(key, _Remote):
        return ("remote", "not fetched offline")
    if isinstance(key, _Invalid):
        return ("invalid", key.reason)
    from PIL import Image

    if isinstance(key, EmbeddedImage):
        try:
            data = key.read()
        except Exception as err:  # the table could not be read: report it as this image's problem
            return ("unreadable", f"cannot read its bytes: {err}")
        source: Any = io.BytesIO(data)
    else:
        if not key.is_file():
            return ("missing", "no such file")
        source = key
    try:
        with Image.open(source) as image:
            kind = image.format
            image.verify()
        if kind == "JPEG":
            _check_jpeg_complete(source)
        elif kind != "PNG":  # verify() reads a PNG's every chunk; for other formats only a decode tells
            if isinstance(source, io.BytesIO):
                source.seek(0)
            with Image.open(source) as image:
                image.load()
    except Exception as err:  # Pillow raises many kinds: OSError, SyntaxError, ValueError, DecompressionBombError
        return ("unreadable", str(err) or type(err).__name__)
    return None


def _check_jpeg_complete(source: Any) -> None:
    """Raise OSError when a JPEG is cut short. `Image.verify()` does not decode JPEG data, so a truncated file
    passes it and fails hours later, in the middle of a stage.

    A complete JPEG ends with the end-of-image marker (FF D9), possibly followed by padding; reading the last
    bytes costs nothing. Only a file without the marker (cut short, or with data appended after it) is decoded,
    in draft mode (1/8 scale), which fails with "image file is truncated" exactly when the data is incomplete.
    """
    from PIL import Image

    if isinstance(source, io.BytesIO):
        tail = source.getvalue()[-4096:]
        source.seek(0)
    else:
        with open(source, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            tail = handle.read()
    if tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return
    with Image.open(source) as image:
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
