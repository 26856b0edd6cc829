"""`--layers last:K`: gradient features from the LoRA matrices of the last K decoder layers only."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tive.cli import main
from tive.config import FeaturesOptions
from tive.errors import TiveError
from tive.features.grads import record_gradient
from tive.features.projection import make_projector
from tive.model.encode import collate, encode_record
from tive.model.loading import decoder_layer_names, load_with_adapter, lora_gradients_only, parse_layers
from tive.rundir import load_prepared, ok_rows, read_manifest
from tive.stages import run_features
from tive.stages.features import feature_request, read_warmup

from .conftest import SMALL_PROJ_DIM, small_options


def test_parse_layers():
    assert parse_layers("all") is None
    assert parse_layers("last:1") == 1
    assert parse_layers("LAST:12") == 12
    for bad in ("last:0", "last:", "first:2", "2", "last:-1", "last:x"):
        with pytest.raises(TiveError, match="--layers"):
            parse_layers(bad)


def test_last_k_freezes_earlier_lora_and_the_backward_stops_there(small_run: Path):
    model, processor = load_with_adapter(small_run / "base_model", small_run / "warmup" / "adapter", "cpu")
    layers = decoder_layer_names(model)
    assert len(layers) == 2  # the tiny model
    named = lora_gradients_only(model, last_layers=1)
    assert named and all(name.startswith(layers[1] + ".") for name, _ in named)
    for name, param in model.named_parameters():
        if ".lora_" in name and name.startswith(layers[0] + "."):
            assert not param.requires_grad, name
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {name for name, _ in named}

    # No graph before the last layer: the first layer's output does not require a gradient, so autograd's
    # backward pass cannot reach it.
    seen = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: seen.__setitem__(
            name, (output[0] if isinstance(output, tuple) else output).requires_grad)) for name in layers]
    dataset, _ = load_prepared(small_run)
    inputs = collate([encode_record(processor, dataset.records[0])], processor.tokenizer.pad_token_id)
    try:
        record_gradient(model, [p for _, p in named], inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {layers[0]: False, layers[1]: True}

    with pytest.raises(TiveError, match="2 decoder layers"):
        lora_gradients_only(model, last_layers=3)


def test_last_k_features_equal_the_all_layer_gradients_restricted_to_those_matrices(small_run: Path, tmp_path: Path):
    """Norms and projections computed on the last layer's LoRA matrices alone, from the full (loop) gradient."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    base = small_options(Path("unused"))[2]
    options = replace(base, layers="last:1", feature_dtype="float32", grad_batch_size=4, force=True)
    run_features(run, options)
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert meta["request"]["layers"] == "last:1"
    features = np.load(run / "features" / "features.npy")
    norms = np.load(run / "features" / "norms.npy")

    model, processor = load_with_adapter(run / "base_model", run / "warmup" / "adapter", "cpu")
    everything = lora_gradients_only(model)
    last = decoder_layer_names(model)[-1] + "."
    keep, start = [], 0
    for name, param in everything:
        if name.startswith(last):
            keep.append(torch.arange(start, start + param.numel()))
        start += param.numel()
    keep = torch.cat(keep)
    assert 0 < len(keep) < start
    projector = make_projector(base.projector, len(keep), SMALL_PROJ_DIM, base.proj_seed, "cpu")
    dataset, _ = load_prepared(run)
    rows = ok_rows(read_manifest(run))
    assert len(rows) == len(features)
    params = [p for _, p in everything]
    for position in range(0, len(rows), 23):  # a spread of records
        record = dataset.records[rows[position]["index"]]
        inputs = collate([encode_record(processor, record)], processor.tokenizer.pad_token_id)
        gradient = record_gradient(model, params, inputs)[keep]
        np.testing.assert_allclose(norms[position], gradient.double().norm().item(), rtol=1e-5)
        expected = projector.project(gradient[None].float())[0].numpy()
        np.testing.assert_allclose(features[position], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_layers_is_part_of_the_request_and_old_features_are_not_reused(small_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    base = small_options(Path("unused"))[2]
    from tive.rundir import candidate_rows

    warm, candidates = read_warmup(run), candidate_rows(read_manifest(run))
    everything = feature_request(run, warm, base, candidates)
    assert "layers" not in everything  # the default: stores made before --layers existed still match
    assert feature_request(run, warm, replace(base, layers="last:1"), candidates)["layers"] == "last:1"
    assert feature_request(run, warm, replace(base, layers="last:2"), candidates) != everything
    # The all-layer store is refused for last:1 (not reused), from the command line too.
    assert main(["features", str(run), "--layers", "last:1", "--proj-dim", str(SMALL_PROJ_DIM),
                 "--chunk-size", "32"]) == 2
    assert main(["features", str(run), "--layers", "last:9"]) == 2


def test_layers_and_target_model_reach_tive_run_and_the_config(tmp_path: Path):
    from tive.cli import _parse
    from tive.config import WarmupOptions, options_from_args

    config = tmp_path / "config.yaml"
    config.write_text("features: {layers: 'last:2'}\nwarmup: {model: tiny, target_model: /models/llava-1.5-7b-hf}\n")
    args = _parse(["run", "data.json", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert options_from_args(FeaturesOptions, args).layers == "last:2"
    assert options_from_args(WarmupOptions, args).target_model == "/models/llava-1.5-7b-hf"
    args = _parse(["run", "data.json", "--out", str(tmp_path / "run"), "--config", str(config), "--layers", "last:1"])
    assert options_from_args(FeaturesOptions, args).layers == "last:1"  # the command line wins


def test_last_k_batched_gradients_equal_the_loop_under_gradient_checkpointing(small_run: Path):
    """With checkpointing the backward recomputes only the layers it covers; the hooks still give exact gradients."""
    from tive.features.grads import BatchedGradients
    from tive.model.loading import checkpoint_in_eval, enable_gradient_checkpointing

    model, processor = load_with_adapter(small_run / "base_model", small_run / "warmup" / "adapter", "cpu")
    enable_gradient_checkpointing(model)
    checkpoint_in_eval(model)
    named = lora_gradients_only(model, last_layers=1)
    dataset, _ = load_prepared(small_run)
    encoded = [encode_record(processor, record) for record in dataset.records[:5]]
    batched = BatchedGradients(model, named)(collate(encoded, processor.tokenizer.pad_token_id))
    params = [p for _, p in named]
    loop = torch.stack([record_gradient(model, params, collate([e], processor.tokenizer.pad_token_id))
                        for e in encoded])
    assert batched.shape == loop.shape == (5, sum(p.numel() for p in params))
    assert ((batched - loop).norm(dim=1) / loop.norm(dim=1)).max() <= 1e-5
