"""The data layer: reading instruction datasets, checking images, grouping records into tasks, writing subsets.

Importable without numpy, torch, pyarrow, datasets or Pillow, so that data checks and tests run anywhere; the
Parquet / `datasets` readers and the image code import their libraries when called.
"""

from tive.data.formats import Dataset, dataset_sha256, load_dataset, write_subset
from tive.data.images import check_images, open_images, resolve_image_paths
from tive.data.records import STATUS_OK, EmbeddedImage, Record, Turn
from tive.data.tasks import assign_tasks

__all__ = [
    "Dataset",
    "load_dataset",
    "write_subset",
    "dataset_sha256",
    "check_images",
    "resolve_image_paths",
    "open_images",
    "assign_tasks",
    "Record",
    "Turn",
    "EmbeddedImage",
    "STATUS_OK",
]
