"""`tive estimate`: how long the warm-up and the features will take, on this model and device, before the run.

It times a few warm-up steps and a few feature batches with the real model, the real settings and the same code
the stages run (`tive.model.warmup.train_warmup`, `tive.features.extract.extract_chunks`, counted by the same
`Progress` whose rate gives the stages' ETA), on records sampled from the run, then scales: warm-up steps =
ceil(warm-up records / batch) x epochs, feature records = every candidate, each divided by the number of devices
(data parallelism; start-up and the merge are not included). With `--reference-adapter` there is no warm-up: the
features are timed with that adapter. It prints and writes `estimate.json`: the projected wall times, the feature
store's size on disk (and the peak during the merge, when the chunks and the merged arrays exist together), and the
peak memory it saw (the device's on a GPU, this process's on a CPU).
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tive.badrecords import BadRecords
from tive.config import EstimateOptions, FeaturesOptions, WarmupOptions
from tive.errors import TiveError
from tive.io import write_json
from tive.progress import Progress, format_seconds
from tive.rundir import BASE_MODEL_DIR, candidate_rows, load_prepared, open_run_dir, read_manifest, stage_log
from tive.stages.common import say

ESTIMATE_FILE = "estimate.json"


def run_estimate(run_dir: Path | str, warmup: WarmupOptions, features: FeaturesOptions,
                 options: EstimateOptions) -> dict[str, Any]:
    """Time the warm-up and the features on a sample of the run's records; project the whole run."""
    from tive.stages.features import _check_options
    from tive.stages.warmup import _warmup_settings

    settings = _warmup_settings(warmup)
    _check_options(features)
    from tive.stages.warmup import check_target_model

    check_target_model(warmup.target_model)
    if options.devices < 1 or options.warmup_steps < 1 or options.feature_batches < 1:
        raise TiveError("--devices, --warmup-steps and --feature-batches must be at least 1")
    run_dir = open_run_dir(run_dir)
    with stage_log(run_dir):
        return _estimate(run_dir, warmup, features, options, settings)


def _estimate(run_dir: Path, warmup: WarmupOptions, features: FeaturesOptions, options: EstimateOptions,
              settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tive.model.loading import resolve_device
    from tive.stages.warmup import BUILTIN_DEFAULTS, _base_model_dir

    rows = candidate_rows(read_manifest(run_dir))
    if not rows:
        raise TiveError(f"{run_dir}: no record has status ok; nothing to estimate")
    dataset, _ = load_prepared(run_dir, lazy=True)  # the samples read when drawn
    records = dataset.records.take([row["index"] for row in rows])
    base_dir = _base_model_dir(run_dir, warmup.model)
    if warmup.model in BUILTIN_DEFAULTS and not (run_dir / BASE_MODEL_DIR / "config.json").is_file():
        from tive.model.tiny import build_tiny_model

        build_tiny_model(base_dir, (t.text() for r in records for t in r.turns), seed=warmup.seed, preset=warmup.model)
    device = resolve_device(features.device)
    rng = np.random.default_rng(warmup.seed)
    scratch = run_dir / "estimate.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    adapter = settings.get("reference_adapter")  # a given reference model: no warm-up to time
    try:
        if adapter:
            from tive.model.loading import check_reference_adapter

            check_reference_adapter(Path(adapter), base_dir)
            warm = {"steps_per_second": math.inf, "batch": f"no warm-up: reference adapter {adapter}"}
        else:
            warm = _time_warmup(base_dir, scratch, records, settings, warmup, options, rng)
        feats = _time_features(base_dir, scratch, records, settings, features, options, rng, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n_warm = 0 if adapter else max(1, min(len(records), round(settings["warmup_fraction"] * len(records))))
    warm_steps = 0 if adapter else math.ceil(n_warm / settings["batch_size"]) * settings["epochs"]
    warm_seconds = warm_steps / warm["steps_per_second"] / options.devices
    feature_seconds = len(records) / feats["records_per_second"] / options.devices
    bytes_per_value = np.dtype(features.feature_dtype).itemsize
    store = len(records) * (feats["proj_dim"] * bytes_per_value + 8)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "records": len(records),
        "devices": options.devices,
        "device": device,
        "warmup": {"records": n_warm, "steps": warm_steps, "seconds_per_step": 1 / warm["steps_per_second"],
                   "seconds": warm_seconds, "batch": warm["batch"],
                   **({"reference_adapter": adapter} if adapter else {})},
        "features": {"records": len(records), "seconds_per_record": 1 / feats["records_per_second"],
                     "seconds": feature_seconds, "grad_dim": feats["grad_dim"], "proj_dim": feats["proj_dim"],
                     "batch_size": feats["batch_size"]},
        "store_bytes": store,
        "merge_peak_bytes": 2 * store,
        "peak_memory_bytes": int(peak),
        "total_seconds": warm_seconds + feature_seconds,
    }
    result["flops"] = _flop_accounting(base_dir, records, warmup, features, options, settings, n_warm, rng)
    write_json(run_dir / ESTIMATE_FILE, result)
    gb = 1 << 30
    say(
        f"estimate: {len(records):,} records on {options.devices} device(s) ({device}):\n"
        + (f"  warm-up:  none (reference adapter {adapter})\n" if adapter else
           f"  warm-up:  {warm_steps:,} steps x {1 / warm['steps_per_second']:.3g} s = "
           f"{format_seconds(warm_seconds)} ({n_warm:,} records, {warm['batch']})\n")
        + f"  features: {len(records):,} records x {1 / feats['records_per_second']:.3g} s = "
        f"{format_seconds(feature_seconds)} (gradient of {feats['grad_dim']:,} numbers -> {feats['proj_dim']}, "
        f"batch {feats['batch_size']})\n"
        f"  total:    {format_seconds(warm_seconds + feature_seconds)} (start-up and the merge not included)\n"
        f"  feature store: {store / gb:.2f} GB on disk ({2 * store / gb:.2f} GB while merging); "
        f"peak memory seen: {peak / gb:.2f} GB ({'device' if device.startswith('cuda') else 'process'})\n"
        + _flop_lines(result["flops"], result["total_seconds"], options.devices)
    )
    return result


def _lora_shape(settings: dict[str, Any], reference: Any) -> tuple[int, list[str], int]:
    """The LoRA rank, target module names and warm-up epochs to price: the warm-up's settings, or, with
    `--reference-adapter` (no warm-up to run), the adapter's own `adapter_config.json`."""
    if "reference_adapter" not in settings:
        return settings["lora_rank"], list(settings["lora_targets"]), settings["epochs"]
    from tive.model.loading import adapter_settings_json

    adapter = adapter_settings_json(Path(settings["reference_adapter"]))
    modules = adapter.get("target_modules") or []
    # tive writes a regex (`<language model>\..*\.(q_proj|...)$`); other tools a list of names.
    names = [name for name in reference.lora_params_per_layer
             if (name in modules if isinstance(modules, list) else re.search(rf"\b{re.escape(name)}\b", modules))]
    return int(adapter["r"]), names, 0


def _flop_accounting(base_dir: Path, records: list[Any], warmup: WarmupOptions, features: FeaturesOptions,
                     options: EstimateOptions, settings: dict[str, Any], n_warm: int,
                     rng: np.random.Generator) -> dict[str, Any]:
    """The selection's FLOPs against one fine-tuning epoch of the target (`tive.cost`), from the configs and the
    token counts of a sample of the run's records encoded as the stages encode them."""
    from tive.cost import epoch_flops, measure_tokens, model_shape, selection_flops
    from tive.model.encode import Encoder
    from tive.model.loading import load_processor, parse_layers

    if options.token_records < 1:
        raise TiveError(f"--token-records {options.token_records}: must be at least 1")
    reference = model_shape(base_dir)
    target_dir = Path(warmup.target_model).expanduser() if warmup.target_model else None
    target = model_shape(target_dir) if target_dir is not None else reference
    sample = _sample(records, options.token_records, rng)
    tokens = measure_tokens(Encoder(load_processor(base_dir), features.max_length), sample, len(records))
    rank, targets, epochs = _lora_shape(settings, reference)
    selection = selection_flops(
        reference, tokens, warmup_records=n_warm, epochs=epochs, lora_rank=rank,
        lora_targets=targets, last_layers=parse_layers(features.layers),
        warmup_checkpointing=warmup.gradient_checkpointing, features_checkpointing=features.gradient_checkpointing)
    epoch = epoch_flops(target, tokens, gradient_checkpointing=True)
    epoch_plain = epoch_flops(target, tokens, gradient_checkpointing=False)
    if target_dir is not None:
        epoch["measured"] = _time_target_epoch(target_dir, records, features, options, rng)
    return {
        "reference": {"model": warmup.model, **reference.describe()},
        "target": {"model": str(target_dir) if target_dir else warmup.model, "is_reference": target_dir is None,
                   **target.describe()},
        "tokens": {"records": tokens.records, "sampled": tokens.sampled, "text_per_record": tokens.text_tokens,
                   "images_per_record": tokens.images, "reference_image_tokens_per_image": tokens.image_tokens,
                   "text_tokens_from": "the reference's tokenizer"},
        "layers": features.layers,
        "selection": selection,
        "epoch": epoch,
        "epoch_without_checkpointing": epoch_plain,
        "selection_share_of_epoch": selection["flops"] / epoch["flops"],
        "selection_share_of_epoch_without_checkpointing": selection["flops"] / epoch_plain["flops"],
    }


def _time_target_epoch(target_dir: Path, records: list[Any], features: FeaturesOptions, options: EstimateOptions,
                       rng: np.random.Generator) -> dict[str, Any] | None:
    """One fine-tuning epoch of the target on this machine, where its weights are here and it fits: a few full
    fine-tuning steps timed as `finetune.sh` runs them (language model and projector trained with AdamW, vision
    tower frozen, gradient checkpointing), scaled to every record on `options.devices` devices. None with a
    config-only target; the reason when it does not fit."""
    import torch

    from tive.cost import _VISION_NAMES
    from tive.features.grads import _forward_losses
    from tive.model.data import encode_batch
    from tive.model.encode import Encoder
    from tive.model.loading import enable_gradient_checkpointing, load_base, resolve_device

    if not any(target_dir.glob("*.safetensors")) and not any(target_dir.glob("*.bin")):
        return None
    device = resolve_device(features.device)
    batch = features.grad_batch_size or 4
    try:
        model, processor = load_base(target_dir, device, features.dtype)
        for name, param in model.named_parameters():
            param.requires_grad_(not any(part in _VISION_NAMES for part in name.split(".")))
        if getattr(model, "supports_gradient_checkpointing", False):
            enable_gradient_checkpointing(model)
        model.train()
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        encoder = Encoder(processor, features.max_length)
        sample = _sample(records, batch * (options.feature_batches + 1), rng)
        seconds, timed = 0.0, 0
        for step in range(0, len(sample), batch):
            encoded = encode_batch(encoder, sample[step : step + batch])
            if encoded.inputs is None:
                continue
            inputs = {key: value.to(device) for key, value in encoded.inputs.items()}
            started = time.perf_counter()
            _forward_losses(model, inputs).mean().backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if step:  # the first step warms up
                seconds, timed = seconds + time.perf_counter() - started, timed + len(encoded.members)
    except torch.OutOfMemoryError:
        return {"error": f"the target does not fit on {device} for full fine-tuning with batch {batch}"}
    finally:
        model = optimiser = None
    if not timed:
        return None
    per_record = seconds / timed
    return {"seconds_per_record": per_record, "seconds": per_record * len(records) / options.devices,
            "device": device, "batch": batch}


def _flop_lines(flops: dict[str, Any], seconds: float, devices: int) -> str:
    from tive.cost import format_flops

    ref, target, tokens = flops["reference"], flops["target"], flops["tokens"]
    selection, epoch = flops["selection"], flops["epoch"]
    name = "the reference itself (no --target-model)" if target["is_reference"] else target["model"]
    backward = ("every layer" if flops["layers"] == "all" else
                f"the output head and the last {selection['backward_layers']} of {ref['layers']} layers")
    trained = target["layer_params"] + target["head_params"]
    return (
        f"  FLOPs (a forward pass: 2 x parameters x tokens; a backward: 2 more through each layer it covers and 2 more "
        f"for trained weights; the frozen vision tower's forward included); a record: "
        f"{tokens['text_per_record']:.0f} text tokens (the reference's tokenizer) + {tokens['images_per_record']:.2f} "
        f"images, mean of {tokens['sampled']} sampled records:\n"
        f"    one epoch of {name}: {format_flops(epoch['flops'])} (full fine-tuning as LLaVA's finetune.sh: 8 x "
        f"{trained / 1e9:.3g}B language-model parameters x {epoch['tokens_per_record']:.0f} tokens x "
        f"{tokens['records']:,} records, {epoch['image_tokens_per_image']:.0f} tokens an image; "
        f"{target['total_params'] / 1e9:.3g}B parameters in all)\n"
        f"    selection with {ref['model']} ({ref['total_params'] / 1e9:.3g}B): warm-up "
        f"{format_flops(selection['warmup_flops'])} + features {format_flops(selection['features_flops'])} "
        f"(backward through {backward}) = {format_flops(selection['flops'])}\n"
        f"    selection ~ {_percent(flops['selection_share_of_epoch'])} of one epoch "
        f"({_percent(flops['selection_share_of_epoch_without_checkpointing'])} of one without gradient "
        f"checkpointing); measured here: {format_seconds(seconds)} on {devices} device(s); "
        + _measured_epoch(epoch.get("measured"), target["is_reference"])
    )


def _percent(share: float) -> str:
    """A share as a percentage: one decimal from 1%, two significant digits below (a tiny reference's 0.0062%)."""
    return f"{100 * share:.1f}%" if share >= 0.01 else f"{100 * share:.2g}%"


def _measured_epoch(measured: dict[str, Any] | None, is_reference: bool) -> str:
    if is_reference:
        return "an epoch is timed only for a --target-model"
    if measured is None:
        return "the target's epoch is not timed (no weights here: its config alone prices it)"
    if "error" in measured:
        return f"the target's epoch is not timed: {measured['error']}"
    return (f"one epoch of the target measured the same way: {format_seconds(measured['seconds'])} "
            f"({measured['seconds_per_record']:.3g} s a record, batch {measured['batch']}, {measured['device']})")


def _sample(records: list[Any], n: int, rng: np.random.Generator) -> list[Any]:
    positions = rng.choice(len(records), size=min(n, len(records)), replace=False)
    return [records[int(p)] for p in sorted(positions)]


def _time_warmup(base_dir: Path, scratch: Path, records: list[Any], settings: dict[str, Any],
                 warmup: WarmupOptions, options: EstimateOptions, rng: np.random.Generator) -> dict[str, Any]:
    """Warm-up steps per second over `options.warmup_steps` steps (after one more to warm up)."""
    from tive.model.encode import Encoder
    from tive.model.loading import LoraSettings, add_lora, enable_gradient_checkpointing, load_base
    from tive.model.warmup import BatchPlan, train_warmup
    from tive.stages.warmup import make_accelerator

    accelerator = make_accelerator(warmup.device)
    model, processor = load_base(base_dir, str(accelerator.device), settings["dtype"])
    lora = LoraSettings(settings["lora_rank"], settings["lora_alpha"], settings["lora_targets"],
                        settings["modules_to_save"])
    model = add_lora(model, lora, seed=warmup.seed)
    if warmup.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    plan = BatchPlan.make(settings["batch_size"], warmup.per_device_batch_size, 1)
    sample = _sample(records, settings["batch_size"] * (options.warmup_steps + 1), rng)
    scratch.mkdir(parents=True, exist_ok=True)
    progress = Progress("estimate warm-up", options.warmup_steps + 1, "step", enabled=False)
    bad = BadRecords("estimate", "", "skip", 1.0, len(sample))
    train_warmup(model, Encoder(processor, settings["max_length"]), sample, epochs=1, plan=plan,
                 learning_rate=settings["learning_rate"], seed=warmup.seed, accelerator=accelerator, out_dir=scratch,
                 bad=bad, workers=warmup.loader_workers, progress=progress)
    return {"steps_per_second": progress.rate, "batch": plan.describe()}


def _time_features(base_dir: Path, scratch: Path, records: list[Any], settings: dict[str, Any],
                   features: FeaturesOptions, options: EstimateOptions, rng: np.random.Generator,
                   device: str) -> dict[str, Any]:
    """Feature records per second over `options.feature_batches` batches (after one more to warm up)."""
    from tive.features.extract import choose_batch_size, extract_chunks, make_extraction
    from tive.features.store import FeatureStore
    from tive.model.loading import LoraSettings, add_lora, load_base, load_with_adapter

    if settings.get("reference_adapter"):  # the given adapter: its rank and targets decide the gradient's size
        model, processor = load_with_adapter(base_dir, Path(settings["reference_adapter"]), device, features.dtype)
    else:
        model, processor = load_base(base_dir, device, features.dtype)
        lora = LoraSettings(settings["lora_rank"], settings["lora_alpha"], settings["lora_targets"], [])
        model = add_lora(model, lora, seed=0)  # the cost of a gradient does not depend on the adapter's values
    model.eval()
    job = make_extraction(model, processor, features, device, "estimate")
    grad_dim, projector = job.described["grad_dim"], job.projector
    job.batch_size, _ = choose_batch_size(features.grad_batch_size, job, records[:256])
    batch = job.batch_size if features.grad_mode == "batched" else 1
    sample = _sample(records, batch * (options.feature_batches + 1), rng)
    progress = Progress("estimate features", len(sample), "rec", enabled=False)
    store = FeatureStore(scratch / "features")
    store.chunks_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    extract_chunks(job, [(0, sample)], store, BadRecords("estimate", "", "skip", 1.0, len(sample)), progress,
                   features.loader_workers)
    rate = progress.rate or len(sample) / (time.perf_counter() - started)
    return {"records_per_second": rate, "grad_dim": grad_dim, "proj_dim": projector.proj_dim,
            "batch_size": job.batch_size}
