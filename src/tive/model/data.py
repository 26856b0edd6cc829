"""Records encoded lazily, a batch at a time, in DataLoader workers: memory stays flat in the dataset size.

The warm-up and the features stage never hold more than the batches in flight: a `RecordBatches` item is one
planned batch of records, encoded and collated when a DataLoader worker asks for it, so PIL, the chat template
and the tokenizer run beside the model instead of before it (and 665K records' pixels never sit in memory). A
record that cannot be encoded does not stop the batch: it comes back in `EncodedBatch.failures` with its reason,
for the stage to skip or stop on (`tive.badrecords`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tive.data.records import Record
from tive.model.encode import Encoder, RecordError, collate


@dataclass
class Failure:
    """A record that could not be encoded: the record, the field the problem is in, and the problem."""

    record: Record
    field: str
    problem: str


@dataclass
class EncodedBatch:
    """One planned batch, encoded: the collated inputs of the records that encoded (None when none did).

    Attributes:
        key: what the plan attached to the batch (e.g. its chunk), passed through.
        members: positions (within the planned batch) of the records in `inputs`, in order.
        inputs: the collated model inputs of those records, or None.
        failures: the records that could not be encoded.
        truncated: the indices (`Record.index`) of the records `--max-length` cut.
    """

    key: Any
    members: list[int]
    inputs: dict[str, Any] | None
    failures: list[Failure] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)


def pad_token_id(processor: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS, else 0."""
    tokenizer = processor.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_batch(encoder: Encoder, records: Sequence[Record], key: Any = None) -> EncodedBatch:
    """Encode and collate `records`; the ones that fail are reported, not raised."""
    items, members, failures, truncated = [], [], [], []
    for position, record in enumerate(records):
        try:
            encoded = encoder.encode(record)
        except RecordError as error:
            failures.append(Failure(record, error.field, error.problem))
            continue
        except Exception as error:  # anything else a processor or image decoder raises is this record's problem
            failures.append(Failure(record, "conversations", f"cannot encode it: {type(error).__name__}: {error}"))
            continue
        items.append(encoded.inputs)
        members.append(position)
        if encoded.truncated:
            truncated.append(record.index)
    inputs = collate(items, pad_token_id(encoder.processor)) if items else None
    return EncodedBatch(key, members, inputs, failures, truncated)


class RecordBatches:
    """A map-style dataset whose item k is planned batch k, encoded on access (`encode_batch`).

    Args:
        encoder: encodes one record.
        batches: the plan: per batch, its records and a key passed through to the result.
    """

    def __init__(self, encoder: Encoder, batches: Sequence[tuple[Any, Sequence[Record]]]) -> None:
        self.encoder = encoder
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> EncodedBatch:
        key, records = self.batches[k]
        return encode_batch(self.encoder, records, key)


def default_workers() -> int:
    """DataLoader workers: a quarter of the CPUs this process may use, at most 4 (0 on a 1-2 core machine, where
    a worker would only compete with the model for the same cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus // 4)


def iterate_batches(dataset: RecordBatches, workers: int | None = None) -> Iterator[EncodedBatch]:
    """The dataset's batches in order; with workers, encoded ahead in background processes."""
    import torch

    workers = default_workers() if workers is None else workers
    if workers == 0 or len(dataset) <= 1:
        for k in range(len(dataset)):
            yield dataset[k]
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer's own threads would fight the workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2,
        collate_fn=_identity, persistent_workers=False,
    )
    yield from loader


def _identity(batch: Any) -> Any:
    return batch


def length_order(records: Sequence[Record]) -> list[int]:
    """Positions of `records` ordered by a cheap length estimate (images, then characters), ties by position.

    Batches of similar length waste less on padding. The estimate needs no encoding, so a batch plan can be made
    before anything is encoded; it depends only on the records, so the plan (and the results) are reproducible.
    """

    def size(position: int) -> tuple[int, int, int]:
        record = records[position]
        return (len(record.images), sum(len(turn.text()) for turn in record.turns), position)

    return sorted(range(len(records)), key=size)
