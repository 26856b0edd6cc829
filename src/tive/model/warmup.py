"""The warm-up: a LoRA fine-tune of the base model on a small task-balanced sample (the reference model).

One code path for one process and N ranks (`torchrun`, `srun`): `accelerate` wraps the model (DDP), places it on
each rank's device and saves / restores the training state; tive decides the data and the loss.

**The same training for any number of ranks.** The optimiser step is over a *global batch* of `batch_size`
records, taken in a seeded order that does not depend on the number of ranks. Each rank encodes its share of the
global batch (in DataLoader workers, a micro-batch of at most `per_device_batch_size` records at a time) and the
loss of a micro-batch is the sum of its records' losses (each the mean over its own answer tokens) divided by
the number of records of the whole global batch, times the number of ranks (DDP averages gradients over ranks).
So every step's gradient is exactly the gradient of the mean per-record loss over the global batch — for 1 rank
or 8, with or without gradient accumulation — and only float rounding differs.

**Resumable.** Every `checkpoint_every` steps the trained parameters, the optimiser's and the schedule's state, the
step and every rank's random state are saved to `checkpoint/state.pt` (the base weights are not: they do not
change); an interrupted warm-up rerun with the same settings continues from there with the same data order,
schedule and dropout, so it ends where an uninterrupted one would (on the same number of ranks).

**Reproducible.** The data order comes from `torch.Generator(seed)`; dropout (where a checkpoint's config has
it) from the global generator seeded with the seed (and the rank) for the duration of the training.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import warnings
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tive.badrecords import BadRecords
from tive.data.records import Record
from tive.errors import TiveError
from tive.rundir import TRAIN_LOG
from tive.select import split_budget

log = logging.getLogger("tive")

CHECKPOINT_DIR = "checkpoint"
# What `checkpoint/state.pt` holds; a checkpoint of another format is not resumed (the warm-up starts over).
# 3: every rank's skipped records and truncations too.
CHECKPOINT_FORMAT = 3


def warmup_sample(tasks: Sequence[str], fraction: float, seed: int) -> list[int]:
    """Positions (into `tasks`) of the warm-up set: `fraction` of the records, split equally across tasks.

    A task smaller than its equal share gives all its records and the rest is spread over the other tasks.
    """
    names = sorted(set(tasks))
    sizes = {name: 0 for name in names}
    for task in tasks:
        sizes[task] += 1
    total = max(1, min(len(tasks), round(fraction * len(tasks))))
    per_task = split_budget({name: 1.0 for name in names}, sizes, total)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    positions = np.arange(len(tasks))
    task_array = np.asarray(tasks, dtype=object)
    for name in names:
        members = positions[task_array == name]
        chosen.extend(rng.choice(members, size=per_task[name], replace=False).tolist())
    return sorted(chosen)


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is split: `batch_size` = `per_device` × `world` × `accumulation` (at most)."""

    batch_size: int
    per_device: int
    world: int
    accumulation: int

    @classmethod
    def make(cls, batch_size: int, per_device_batch_size: int | None, world: int) -> BatchPlan:
        share = math.ceil(batch_size / world)
        per_device = min(share, per_device_batch_size or share)
        return cls(batch_size, per_device, world, math.ceil(share / per_device))

    def describe(self) -> str:
        return (f"effective batch {self.batch_size} = {self.per_device} per device x {self.world} rank(s) x "
                f"{self.accumulation} accumulation step(s)")


def epoch_orders(n: int, epochs: int, seed: int) -> list[list[int]]:
    """The record order of every epoch, from one seeded generator (independent of the number of ranks)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator).tolist() for _ in range(epochs)]


def rank_micro_batches(batch: Sequence[int], plan: BatchPlan, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch: its contiguous share, cut into `per_device` records."""
    share = math.ceil(len(batch) / plan.world)
    mine = list(batch[rank * share : (rank + 1) * share])
    return [mine[i : i + plan.per_device] for i in range(0, len(mine), plan.per_device)]


def train_warmup(
    model: Any,
    encoder: Any,
    records: Sequence[Record],
    *,
    epochs: int,
    plan: BatchPlan,
    learning_rate: float,
    seed: int,
    accelerator: Any,
    out_dir: Path,
    bad: BadRecords,
    checkpoint_every: int = 0,
    resume_key: str = "",
    workers: int | None = None,
    progress_interval: float = 30.0,
    progress: Any = None,
) -> tuple[list[float], set[int]]:
    """Train the trainable parameters of `model` on `records`; returns each optimiser step's loss and the indices
    of the records `--max-length` cut (on this rank).

    AdamW, cosine schedule with 3% linear warm-up steps (the authors' recipe). A step's loss is the mean over the
    records of its global batch of each record's mean answer-token loss. Records that cannot be encoded are
    reported to `bad` (skipped, or the run stops) and leave their batch smaller.

    Args:
        model: the peft model (unwrapped); `accelerator.prepare` wraps it.
        encoder: a `tive.model.encode.Encoder`.
        records: the warm-up records.
        epochs: passes over `records`.
        plan: the global batch and its split over ranks and accumulation steps.
        learning_rate: AdamW's peak learning rate.
        seed: seeds the data order and dropout.
        accelerator: an `accelerate.Accelerator` (one process or one rank of several).
        out_dir: the warm-up directory: train_log.jsonl and checkpoint/ go there.
        bad: collects the records that could not be encoded.
        checkpoint_every: save the training state every this many steps (0: never).
        resume_key: identifies the settings; a checkpoint made with another key is not resumed.
        workers: DataLoader workers encoding ahead (None: `default_workers()`).
        progress_interval: seconds between progress lines when the output is not a terminal.
        progress: a `tive.progress.Progress` to count the steps on (e.g. `tive estimate`'s); by default one is made.
    """
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tive.model.data import RecordBatches, iterate_batches
    from tive.model.encode import answer_loss_per_record
    from tive.progress import Progress

    rank, world = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = math.ceil(len(records) / plan.batch_size)
    total_steps = steps_per_epoch * epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * total_steps), total_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    rng_devices = [torch.cuda.current_device()] if device.type == "cuda" else []

    checkpoint = out_dir / CHECKPOINT_DIR
    start_step, losses, rng_state = 0, [], None
    truncated: set[int] = set()
    resumed = _load_checkpoint(checkpoint, resume_key, model, optimizer, scheduler)
    if resumed is not None:
        start_step, losses, rng_states, seen = resumed
        rng_state = rng_states[rank] if len(rng_states) == world else None
        # The records skipped and cut before the checkpoint: each rank takes its own back (on another number of
        # ranks, rank 0 takes them all: the stage reports their union).
        for part in ([seen[rank]] if len(seen) == world else seen if rank == 0 else []):
            bad.restore(part["bad"])
            truncated.update(part["truncated"])
        log.info("warm-up: resuming from step %d of %d (%s)%s", start_step, total_steps, checkpoint,
                 "" if rng_state is not None else
                 f"; it was saved by {len(rng_states)} rank(s), not {world}: dropout is seeded afresh")

    orders = epoch_orders(len(records), epochs, seed)
    steps = [order[s * plan.batch_size : (s + 1) * plan.batch_size] for order in orders for s in range(steps_per_epoch)]
    micro = [(step, rank_micro_batches(steps[step], plan, rank)) for step in range(start_step, total_steps)]
    planned = [((step, k, len(parts)), [records[i] for i in part]) for step, parts in micro
               for k, part in enumerate(parts)]
    batches = iterate_batches(RecordBatches(encoder, planned), workers)

    log_path = out_dir / TRAIN_LOG
    if rank == 0:
        _truncate_log(log_path, start_step)  # the steps after the checkpoint are logged again
    wrapped.train()
    last_inputs = None
    with torch.random.fork_rng(devices=rng_devices), open(log_path, "a", encoding="utf-8") as log_file, \
            (nullcontext(progress) if progress is not None
             else Progress("warm-up", total_steps, "step", start_step, progress_interval, rank == 0)) as progress:
        # Start the encoding first: a DataLoader draws its workers' seed from the global generator, which must then
        # be where the seed (or the checkpoint) puts it.
        pending = iter(batches)
        pending = itertools.chain(list(itertools.islice(pending, 1)), pending)
        torch.manual_seed(seed + rank)
        if rng_state is not None:
            _set_rng_state(rng_state, device)
        for step in range(start_step, total_steps):
            parts = [next(pending) for _ in micro[step - start_step][1]]
            stop: str | None = None  # why this rank cannot go on (shared with the others before anyone stops)
            try:
                for part in parts:
                    for failure in part.failures:
                        bad.fail(failure.record.index, failure.record.record_id, failure.field, failure.problem)
                    bad.done(len(part.members) + len(part.failures))
                    truncated.update(part.truncated)
            except TiveError as error:
                if world == 1:
                    raise
                stop = str(error)
            good = [part for part in parts if part.inputs is not None]
            if world > 1 and stop is None and not good and last_inputs is None:
                # Nothing of its own this step and nothing encoded yet: a later record for the zero-weight pass
                # DDP needs (found before the status exchange, so a rank that finds none stops every rank).
                later = (records[i] for _, rest in micro[step - start_step + 1:] for part in rest for i in part)
                try:
                    last_inputs = first_encodable(encoder, itertools.chain(later, records))
                except TiveError as error:
                    stop = str(error)
            local = torch.tensor([float(sum(len(part.members) for part in good))], device=device)
            if world > 1:
                count = _step_status(accelerator, step, local, stop, bad)
            else:
                count = float(local.item())
            if count == 0:  # every record of this global batch failed: no step (the schedule moves on)
                with warnings.catch_warnings():  # no optimiser step, on purpose: torch's warning does not apply
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
                    scheduler.step()
                progress.update(1)
                continue
            if not good:  # this rank has nothing, but DDP needs its backward: a zero-weight pass on other inputs
                good, weight = [last_inputs], 0.0
            else:
                weight = 1.0
            loss_sum = torch.zeros((), device=device)
            try:
                # A zero-weight pass leaves the random stream as it was: it changes nothing in the training.
                with torch.random.fork_rng(devices=rng_devices) if weight == 0.0 else nullcontext():
                    for k, part in enumerate(good):
                        inputs = {key: value.to(device) for key, value in part.inputs.items()}
                        labels = inputs.pop("labels")
                        context = accelerator.no_sync(wrapped) if k < len(good) - 1 else nullcontext()
                        with context:
                            per_record = answer_loss_per_record(wrapped(**inputs).logits, labels)
                            loss = per_record.sum() * (weight * world / count)
                            accelerator.backward(loss)
                        loss_sum += per_record.detach().sum() * weight
                        last_inputs = part
                optimizer.step()
            except torch.OutOfMemoryError as error:
                raise TiveError(
                    f"warm-up: out of memory on {device} at step {step + 1} ({plan.per_device} records per forward "
                    f"pass); lower --per-device-batch-size (now {plan.per_device}; the effective batch stays "
                    f"--batch-size {plan.batch_size}), add --gradient-checkpointing, or a smaller --max-length"
                ) from error
            except RuntimeError as error:
                if world > 1 and _lost_peers(error):
                    raise TiveError(_lost_message(rank, world, step)) from error
                raise
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            try:
                value = float((accelerator.reduce(loss_sum, "sum") if world > 1 else loss_sum).item()) / count
            except RuntimeError as error:
                if _lost_peers(error):
                    raise TiveError(_lost_message(rank, world, step)) from error
                raise
            losses.append(value)
            if rank == 0:
                log_file.write(json.dumps({"step": step + 1, "epoch": step // steps_per_epoch, "loss": value,
                                           "lr": scheduler.get_last_lr()[0], "records": int(count)}) + "\n")
                log_file.flush()
            progress.update(1, postfix=f"loss {value:.3f}")
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total_steps:
                _save_checkpoint(accelerator, checkpoint, model, optimizer, scheduler, step + 1, losses, resume_key,
                                 {"bad": bad.state(), "truncated": sorted(truncated)})
    wrapped.eval()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return losses, truncated


def _step_status(accelerator: Any, step: int, local: Any, stop: str | None, bad: BadRecords) -> float:
    """The ranks' status exchange of one step: the global batch's usable records (returned), whether a rank stopped
    and the bad records so far, summed over the ranks in one all-reduce. Every rank learns there that one stopped,
    or that the bad records of all ranks together are over the cap, and all stop at this step with one message
    (the stopping rank's own, or the first failure of the lowest rank that has one)."""
    import torch
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    status = torch.tensor([float(local.item()), float(stop is not None), float(len(bad.reasons)),
                           float(bad.processed)], device=local.device, dtype=torch.float64)
    try:
        count, stopped, failed, processed = (float(x) for x in accelerator.reduce(status, "sum").tolist())
    except RuntimeError as error:
        if _lost_peers(error):
            raise TiveError(_lost_message(rank, world, step)) from error
        raise
    if stopped:
        reasons = gather_object([(rank, stop)])
        first_rank, reason = min((r, why) for r, why in reasons if why is not None)
        raise TiveError(f"warmup: rank {first_rank} of {world} stopped at step {step + 1}, so every rank stops: "
                        f"{reason}")
    if bad.over_cap(int(failed), int(processed)):
        firsts = [first for first in gather_object([bad.first]) if first is not None]
        bad.check_counts(int(failed), int(processed), min(firsts, key=_record_number) if firsts else None)
    return count


def _record_number(first: str) -> int:
    """The record index a `BadRecords.first` description starts with ("record 12 (id ...": 12)."""
    try:
        return int(first.split()[1])
    except (IndexError, ValueError):
        return 0


def _lost_peers(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank is gone or does not answer (gloo's closed
    connection, a process group's timeout, NCCL's failure), not a fault of this rank's own."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(sign in text for sign in ("connection closed by peer", "connection reset by peer", "timed out",
                                         "broken pipe"))


def _lost_message(rank: int, world: int, step: int) -> str:
    return (f"warmup: rank {rank} of {world} lost the other ranks at step {step + 1} (a collective failed or passed "
            "the process group's timeout): another rank stopped or hangs; its own output says why. Fix that and "
            "rerun the launch: the warm-up resumes from its last checkpoint (--checkpoint-steps)")


def first_encodable(encoder: Any, records: Iterable[Record]) -> Any:
    """The first of `records` that encodes, as an `EncodedBatch` of one (encoded here, synchronously).

    For a rank that must take part in a step without a record of its own (DDP needs every rank's backward) before
    it has encoded anything: its zero-weight pass needs some inputs. Failures are not reported: the records are
    reported where their own step reaches them.
    """
    from tive.model.data import encode_batch

    for record in records:
        batch = encode_batch(encoder, [record])
        if batch.inputs is not None:
            return batch
    raise TiveError(
        "warm-up: no warm-up record can be encoded in this process while other ranks can encode theirs; check "
        "that every node sees the images and the model (the run directory and the image root must be shared)"
    )


def _truncate_log(log_path: Path, steps: int) -> None:
    """Keep the first `steps` steps of the train log (none: remove it); a line cut short by a kill goes too."""
    if steps == 0 or not log_path.is_file():
        log_path.unlink(missing_ok=True)
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= steps and line.endswith("\n"):
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    log_path.write_text("".join(kept), encoding="utf-8")


def _rng_state(device: Any) -> dict[str, Any]:
    """This process's random state: the CPU generator's, and the CUDA device's where it trains on one."""
    import torch

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, Any], device: Any) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_checkpoint(accelerator: Any, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, step: int,
                     losses: list[float], key: str, seen: dict[str, Any]) -> None:
    """Save what the warm-up trains (the trainable parameters: LoRA, and the built-in models' modules_to_save),
    the optimiser's and the schedule's state, the step, and every rank's random state (dropout goes on where it
    was) and `seen` (the records it skipped, `BadRecords.state()`, and truncated) to `checkpoint`, through a
    temporary file. The base weights are not saved: they do not change."""
    import torch
    from accelerate.utils import gather_object

    mine = {"rng": _rng_state(accelerator.device), **seen}
    ranks = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    if accelerator.is_main_process:
        checkpoint.mkdir(parents=True, exist_ok=True)
        trained = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
        tmp = checkpoint / "state.pt.tmp"
        torch.save({"format": CHECKPOINT_FORMAT, "key": key, "step": step, "losses": losses, "parameters": trained,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": [part["rng"] for part in ranks],
                    "seen": [{"bad": part["bad"], "truncated": part["truncated"]} for part in ranks]}, tmp)
        tmp.replace(checkpoint / "state.pt")
    accelerator.wait_for_everyone()


def _load_checkpoint(checkpoint: Path, key: str, model: Any, optimizer: Any, scheduler: Any,
                     ) -> tuple[int, list[float], list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Restore a checkpoint made with the same settings (`key`) into `model`, `optimizer` and `scheduler`;
    (step, losses, the random state of each rank that saved it, what each of them skipped and truncated)."""
    import torch

    path = checkpoint / "state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("key") != key or state.get("format") != CHECKPOINT_FORMAT:
        return None
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["parameters"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state["losses"]), list(state["rng"]), list(state["seen"])
