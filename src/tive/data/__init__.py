"""The data layer: reading instruction datasets, checking images, grouping records into tasks, writing subsets.

Importable without numpy or torch, so that data checks and tests run anywhere.
"""

from tive.data.formats import Dataset, load_dataset, write_subset
from tive.data.images import check_images
from tive.data.records import STATUS_OK, Record, Turn
from tive.data.tasks import assign_tasks

__all__ = [
    "Dataset",
    "load_dataset",
    "write_subset",
    "check_images",
    "assign_tasks",
    "Record",
    "Turn",
    "STATUS_OK",
]
