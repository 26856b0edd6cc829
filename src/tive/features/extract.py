"""The per-chunk extraction loop: encode (in workers), per-record gradients, norms, projection, commit.

The features stage decides what to compute (which chunks this process owns, with which model and projector);
this module computes and commits them. Each chunk's records are batched by a cheap length estimate
(`tive.model.data.length_order`), so a chunk's batches — and therefore its bytes — depend only on the chunk and the
batch size, never on which process computes it or when: a resumed or sharded run is byte-identical on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tive.badrecords import BadRecords
from tive.data.records import Record
from tive.errors import TiveError
from tive.features.store import FeatureStore


@dataclass
class Extraction:
    """What the loop needs besides the chunks.

    Attributes:
        model: the reference model (eval mode; only the LoRA matrices require gradients).
        named_params: the LoRA matrices in gradient order (`lora_parameters`).
        encoder: a `tive.model.encode.Encoder`.
        projector: maps (batch, grad_dim) float32 gradients to (batch, proj_dim).
        grad_mode: "batched" (hooks, one backward per batch) or "loop" (one backward per record).
        batch_size: records per forward/backward pass.
        device: where the model is.
        feature_dtype: numpy dtype name the projected features are stored in.
        computed_by: who computes (the launch's description), recorded per chunk.
        described: what the chunk markers record about how the features are made (gradient size, projector,
            encoding, the launch's number of processes; `FeatureStore.write_chunk`).
    """

    model: Any
    named_params: list[tuple[str, Any]]
    encoder: Any
    projector: Any
    grad_mode: str
    batch_size: int
    device: str
    feature_dtype: str
    computed_by: str
    described: dict[str, Any] = field(default_factory=dict)


def make_extraction(model: Any, processor: Any, options: Any, device: str, computed_by: str,
                    world: int = 1) -> Extraction:
    """The extraction job of a reference model with LoRA (batch size still to choose: `choose_batch_size`).

    Gradient checkpointing as `options` (a `FeaturesOptions`) says, gradients w.r.t. the LoRA matrices only, the
    projector and the encoder; `described` gets what every chunk marker records.
    """
    from tive.features.projection import make_projector
    from tive.model.encode import Encoder
    from tive.model.loading import checkpoint_in_eval, enable_gradient_checkpointing, lora_gradients_only

    if options.gradient_checkpointing:
        enable_gradient_checkpointing(model)
        checkpoint_in_eval(model)
    from tive.model.loading import parse_layers

    named_params = lora_gradients_only(model, parse_layers(getattr(options, "layers", "all")))
    grad_dim = sum(p.numel() for _, p in named_params)
    projector = make_projector(options.projector, grad_dim, options.proj_dim, options.proj_seed, device)
    encoder = Encoder(processor, options.max_length)
    described = {"grad_dim": grad_dim, "proj_dim": projector.proj_dim, "projector_description": projector.describe(),
                 "encoding": encoder.describe(), "world": world, "lora_matrices": len(named_params)}
    return Extraction(model, named_params, encoder, projector, options.grad_mode, 1, device, options.feature_dtype,
                      computed_by, described)


MAX_AUTO_BATCH = {"cuda": 64, "cpu": 16}


def _available_cpu_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def choose_batch_size(requested: int | None, job: Extraction, records: Sequence[Record]) -> tuple[int, str]:
    """The gradient batch to use and why: `requested` when given (honoured as is), else from free memory.

    On a GPU, the longest of `records` (by `length_order`'s estimate; the caller gives every record this process
    computes, so that no later chunk holds a longer one) is run alone and its peak memory measured;
    the batch is what fits in 80% of the free memory at that cost per record (at most 64). On a CPU, where the
    peak cannot be measured, the per-record gradient (materialised, then projected) is the estimate, against half
    of the available memory (at most 16).
    """
    import torch

    from tive.features.grads import BatchedGradients
    from tive.model.data import encode_batch, length_order

    if requested is not None:
        return requested, f"batch {requested} (--grad-batch-size)"
    grad_dim = sum(p.numel() for _, p in job.named_params)
    if job.device.startswith("cuda") and records:
        longest = records[length_order(records)[-1]]
        probe = encode_batch(job.encoder, [longest])
        if probe.inputs is not None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            inputs = {key: value.to(job.device) for key, value in probe.inputs.items()}
            try:  # the extraction's own path: one LoRA matrix's gradients at a time
                BatchedGradients(job.model, job.named_params).norms_and_projection(inputs, job.projector)
            except torch.OutOfMemoryError as error:
                raise TiveError(
                    f"features: out of memory on {job.device} with one record (the longest this process computes, "
                    f"record {longest.index}, id {longest.record_id!r}); "
                    "add --gradient-checkpointing, a smaller --max-length or --dtype bfloat16"
                ) from error
            del inputs
            per_record = max(1, torch.cuda.max_memory_allocated() - base)
            free, _ = torch.cuda.mem_get_info()
            batch = max(1, min(MAX_AUTO_BATCH["cuda"], int(0.8 * free // per_record)))
            return batch, (f"batch {batch} (auto: {free / 2**30:.1f} GB free on {job.device}, "
                           f"~{per_record / 2**30:.2f} GB for the longest record)")
    per_record = grad_dim * 4 * 3 + (64 << 20)
    available = _available_cpu_bytes()
    batch = max(1, min(MAX_AUTO_BATCH["cpu"], int(0.5 * available // per_record)))
    return batch, f"batch {batch} (auto: {available / 2**30:.1f} GB available, ~{per_record / 2**20:.0f} MB a record)"


def measure_dense_cost(job: Extraction, records: Sequence[Record], limit: float = 2.0) -> dict[str, Any] | None:
    """Measure whether the dense projection costs more than `limit` times the gradients it projects.

    One batch (`records`) goes through the forward and backward pass twice, the second timed (the first pays the
    one-time costs, as the projector's own estimate — a timed slice scaled to the whole gradient — is warm too).
    Returns the measurement and the verdict ("accepted": projecting ≤ `limit` × backward), or None when no record
    of the batch encodes.
    """
    from tive.features.grads import BatchedGradients
    from tive.model.data import encode_batch

    probe = encode_batch(job.encoder, list(records))
    if probe.inputs is None:
        return None
    inputs = {key: value.to(job.device) for key, value in probe.inputs.items()}
    gradients = BatchedGradients(job.model, job.named_params)
    for _ in gradients._parts(inputs):  # untimed: the first pass's one-time costs
        pass
    started = time.perf_counter()
    for _ in gradients._parts(inputs):
        pass
    backward = time.perf_counter() - started
    projecting = job.projector.estimate_seconds(len(probe.members))
    return {"batch": len(probe.members), "projecting_seconds": projecting, "backward_seconds": backward,
            "limit": limit, "accepted": projecting <= limit * backward}


def dense_refusal(check: dict[str, Any], grad_dim: int, proj_dim: int) -> str:
    """The message that refuses the dense projection, with the recorded measurement `check`."""
    projecting, backward = check["projecting_seconds"], check["backward_seconds"]
    return (
        f"--projector dense: projecting a batch of {check['batch']} would take ~{projecting:.3g} s, the forward and "
        f"backward pass ~{backward:.3g} s: dense would cost {projecting / max(backward, 1e-12):.0f}x the gradients "
        f"themselves ({grad_dim:,} numbers x {proj_dim} dims of random signs per call). Use --projector sjlt (the "
        "same inner products in expectation, at a few additions per number), or a smaller --proj-dim; or pass "
        "--allow-slow-projection to project densely anyway (TRAK/LESS's projection)"
    )


def plan_batches(chunks: Sequence[tuple[int, Sequence[Record]]], batch_size: int) -> list[tuple[Any, list[Record]]]:
    """Per chunk, its records in length order cut into batches; key = (chunk, positions in the chunk, last?)."""
    from tive.model.data import length_order

    planned = []
    for chunk, records in chunks:
        order = length_order(records)
        starts = range(0, len(order), batch_size)
        for start in starts:
            positions = order[start : start + batch_size]
            # A lazy chunk (`LazyRecords`) gives a view: its records are read when the batch is encoded.
            batch = records.take(positions) if hasattr(records, "take") else [records[p] for p in positions]
            planned.append(((chunk, positions, start + batch_size >= len(order)), batch))
    return planned


def extract_chunks(
    job: Extraction,
    chunks: Sequence[tuple[int, Sequence[Record]]],
    store: FeatureStore,
    bad: BadRecords,
    progress: Any,
    workers: int | None = None,
) -> None:
    """Compute and commit every chunk of `chunks` (chunk number, its records in manifest order)."""
    import torch

    from tive.features.grads import BatchedGradients, record_gradient
    from tive.model.data import RecordBatches, iterate_batches

    batched = BatchedGradients(job.model, job.named_params) if job.grad_mode == "batched" else None
    params = [p for _, p in job.named_params]
    batch_size = job.batch_size if batched is not None else 1
    records_of = dict(chunks)
    planned = plan_batches(chunks, batch_size)
    proj_dim = job.projector.proj_dim
    current: dict[str, Any] | None = None
    for batch in iterate_batches(RecordBatches(job.encoder, planned), workers):
        chunk, positions, last = batch.key
        if current is None:
            n = len(records_of[chunk])
            current = {
                "x": np.zeros((n, proj_dim), dtype=np.float32), "norms": np.zeros(n, dtype=np.float64),
                "failed": {}, "truncated": [], "started": time.perf_counter(),
            }
        for failure in batch.failures:
            bad.fail(failure.record.index, failure.record.record_id, failure.field, failure.problem)
            current["failed"][failure.record.index] = failure.problem
        current["truncated"] += batch.truncated
        if batch.inputs is not None:
            inputs = {key: value.to(job.device) for key, value in batch.inputs.items()}
            try:
                if batched is not None:  # one LoRA matrix at a time: the full gradient never exists
                    norms, projected = batched.norms_and_projection(inputs, job.projector)
                else:
                    grads = torch.stack([record_gradient(job.model, params, inputs)])
                    with torch.no_grad():
                        norms, projected = grads.double().norm(dim=1), job.projector.project(grads.float())
                    del grads
            except torch.OutOfMemoryError as error:
                raise TiveError(
                    f"features: out of memory on {job.device} with a gradient batch of {len(batch.members)} "
                    f"records (chunk {chunk}); lower --grad-batch-size (now {batch_size}), or add "
                    f"--gradient-checkpointing, or a smaller --max-length"
                ) from error
            rows = [positions[m] for m in batch.members]
            current["norms"][rows] = norms.cpu().numpy()
            current["x"][rows] = projected.cpu().numpy()
            for m, row in zip(batch.members, rows):  # a NaN or inf gradient would poison its task's scores
                if not (np.isfinite(current["norms"][row]) and np.isfinite(current["x"][row]).all()):
                    record = records_of[chunk][row]
                    problem = "its gradient is not finite (NaN or inf): try --dtype float32"
                    bad.fail(record.index, record.record_id, "conversations", problem)
                    current["failed"][record.index] = problem
        bad.done(len(positions))
        progress.update(len(positions))
        if last:
            records = records_of[chunk]
            failed = current["failed"]
            keep = [p for p, record in enumerate(records) if record.index not in failed]
            store.write_chunk(
                chunk,
                stored_rows(current["x"][keep], job.feature_dtype),
                current["norms"][keep],
                {
                    **job.described,
                    "rows": [records[p].index for p in keep],
                    "skipped": {str(index): reason for index, reason in sorted(failed.items())},
                    "truncated": sorted(current["truncated"]),
                    "batch_size": batch_size,
                    "computed_by": job.computed_by,
                    "device": job.device,
                    "seconds": round(time.perf_counter() - current["started"], 3),
                },
            )
            current = None


def stored_rows(projected: np.ndarray, feature_dtype: str) -> np.ndarray:
    """The projected gradients as the store keeps them: float32 as they are; float16 scaled to unit length first.

    The scores use only the rows' directions (cosines; the lengths that matter are the unprojected norms in
    norms.npy), and a unit row is safe in float16 at any gradient scale: raw projections of a 7B model's gradients
    could overflow float16's 65,504 or sink into its subnormal range (below 6e-5), losing precision.
    """
    if feature_dtype != "float16":
        return projected.astype(feature_dtype)
    lengths = np.linalg.norm(projected, axis=1, keepdims=True)
    return (projected / np.where(lengths > 0, lengths, 1.0)).astype(np.float16)
