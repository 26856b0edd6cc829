"""Per-record gradients, the Rademacher projection, and the resumable feature store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tive.config import FeaturesOptions
from tive.errors import TiveError
from tive.features.grads import BatchedGradients, record_gradient
from tive.features.projection import DenseProjector, make_projector
from tive.model.encode import collate, encode_record
from tive.model.loading import load_with_adapter, lora_gradients_only
from tive.rundir import load_prepared
from tive.stages import run_features


def test_record_gradient_is_the_gradient_of_the_mean_answer_loss(small_run: Path):
    """Checked against transformers' own loss (mean cross-entropy over labelled tokens) and .backward()."""
    model, processor = load_with_adapter(small_run / "base_model", small_run / "warmup" / "adapter", "cpu")
    params = [p for _, p in lora_gradients_only(model)]
    dataset, _ = load_prepared(small_run)
    for record in dataset.records[:3]:
        inputs = collate([encode_record(processor, record)], processor.tokenizer.pad_token_id)
        ours = record_gradient(model, params, inputs)
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        reference = torch.cat([p.grad.reshape(-1) for p in params])
        assert ours.shape == reference.shape
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
        assert ours.norm() > 0


def _trained_reference(small_run: Path):
    model, processor = load_with_adapter(small_run / "base_model", small_run / "warmup" / "adapter", "cpu")
    named = lora_gradients_only(model)
    return model, processor, named


def _mixed_batch(small_run: Path, processor):
    """Records of several tasks: with and without images, one and two turns, different lengths."""
    dataset, _ = load_prepared(small_run)
    by_task = {}
    for record in dataset.records:
        by_task.setdefault(record.task, record)
    records = list(by_task.values())
    assert any(not r.images for r in records) and any(r.images for r in records)
    assert len({len(encode_record(processor, r)["input_ids"]) for r in records}) > 1  # padding happens
    return records, [encode_record(processor, r) for r in records]


def _assert_batched_equals_loop(model, processor, named, encoded):
    params = [p for _, p in named]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    batched = BatchedGradients(model, named)(batch)
    loop = torch.stack([record_gradient(model, params, collate([e], processor.tokenizer.pad_token_id)) for e in encoded])
    assert batched.shape == loop.shape == (len(encoded), sum(p.numel() for p in params))
    relative = (batched - loop).norm(dim=1) / loop.norm(dim=1)
    assert relative.max() <= 1e-5, relative
    assert all(p.grad is None for p in params)  # nothing left behind in .grad


def test_batched_gradients_equal_one_record_at_a_time(small_run: Path):
    model, processor, named = _trained_reference(small_run)
    _, encoded = _mixed_batch(small_run, processor)
    _assert_batched_equals_loop(model, processor, named, encoded)


def test_batched_gradients_equal_loop_with_lora_on_attention_and_mlp(small_run: Path):
    from peft import LoraConfig, get_peft_model

    from tive.model.loading import load_base

    base, processor = load_base(small_run / "base_model")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
        init_lora_weights=False,  # random B as well as A, so every LoRA matrix has a gradient
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(base, config)
    model.eval()
    named = lora_gradients_only(model)
    assert len(named) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    _, encoded = _mixed_batch(small_run, processor)
    _assert_batched_equals_loop(model, processor, named, encoded)


def _copy_run(small_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


def test_features_resume_redoes_only_missing_chunks_and_is_byte_identical(small_run: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    from tests.conftest import small_options
    from tive.features.store import FeatureStore

    run = _copy_run(small_run, tmp_path)
    shutil.rmtree(run / "features")
    options = small_options(Path(json.loads((run / "prepare.json").read_text())["data"]))[2]
    real_write = FeatureStore.write_chunk
    written: list[int] = []

    def killed_after_two_chunks(self, chunk, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # what a kill between two commits looks like to the store
        written.append(chunk)
        return real_write(self, chunk, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_chunk", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_features(run, options)
    features = run / "features"
    assert sorted(p.name for p in (features / "chunks").glob("*.json")) == ["chunk_000000.json", "chunk_000001.json"]
    assert not (features / "features.npy").exists() and not json.loads((features / "meta.json").read_text())["complete"]

    recomputed: list[int] = []

    def counting(self, chunk, *args, **kwargs):
        recomputed.append(chunk)
        return real_write(self, chunk, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_chunk", counting)
    run_features(run, options)
    assert recomputed == [2, 3, 4]  # 140 records in chunks of 32: only the missing ones
    for name in ("features.npy", "norms.npy"):
        assert (features / name).read_bytes() == (small_run / "features" / name).read_bytes()
    assert not (features / "chunks").exists()  # merged: the store on disk is the final arrays


def test_features_refuse_other_projection_unless_forced(small_run: Path, tmp_path: Path):
    run = _copy_run(small_run, tmp_path)
    other = FeaturesOptions(proj_dim=64, proj_seed=1, chunk_size=32)
    with pytest.raises(TiveError, match="other projector.*--force"):
        run_features(run, other)
    run_features(run, FeaturesOptions(proj_dim=64, proj_seed=1, chunk_size=32, force=True))
    assert np.load(run / "features" / "features.npy").shape[1] == 64
    assert json.loads((run / "features" / "meta.json").read_text())["request"]["projector"]["seed"] == 1


def test_features_killed_with_sigkill_resume_to_the_same_bytes(small_run: Path, tmp_path: Path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--proj-dim", "256", "--chunk-size", "8", "--grad-mode", "loop", "--projector", "dense"]
    reference = _copy_run(small_run, tmp_path / "a")
    shutil.rmtree(reference / "features")
    from tive.cli import main

    assert main(["features", str(reference), *args]) == 0

    run = _copy_run(small_run, tmp_path / "b")
    shutil.rmtree(run / "features")
    process = subprocess.Popen([sys.executable, "-m", "tive", "features", str(run), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "features" / "chunks" / "chunk_000003.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "features" / "features.npy").exists()  # really interrupted
    assert not json.loads((run / "features" / "meta.json").read_text())["complete"]
    done = sorted(p.name for p in (run / "features" / "chunks").glob("chunk_*.json"))
    assert len(done) >= 4
    capsys.readouterr()

    assert main(["features", str(run), *args]) == 0
    for name in ("features.npy", "norms.npy"):
        assert (run / "features" / name).read_bytes() == (reference / "features" / name).read_bytes()
    # Committed chunks are reused, not recomputed: the rerun says how many records were already done.
    assert f"; {8 * len(done)} records already done" in capsys.readouterr().out


def test_the_gradient_batch_is_honoured_said_and_recorded_per_chunk(small_run: Path, tmp_path: Path, capsys):
    run = _copy_run(small_run, tmp_path)
    run_features(run, FeaturesOptions(proj_dim=64, chunk_size=32, grad_batch_size=5, force=True))
    assert "batch 5 (--grad-batch-size)" in capsys.readouterr().out
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert {chunk["batch_size"] for chunk in meta["chunks"]} == {5}
    run_features(run, FeaturesOptions(proj_dim=64, chunk_size=32, force=True))
    out = capsys.readouterr().out
    assert "(auto: " in out and "GB available" in out
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert len({chunk["batch_size"] for chunk in meta["chunks"]}) == 1


@pytest.mark.parametrize("name", ["sjlt", "dense"])
def test_streaming_one_matrix_at_a_time_equals_projecting_the_whole_gradient(small_run: Path, name: str):
    """What the features stage computes (norm and projection built one LoRA matrix at a time, the full gradient
    never held) equals the norm and projection of the full per-record gradient."""
    model, processor, named = _trained_reference(small_run)
    _, encoded = _mixed_batch(small_run, processor)
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    full = BatchedGradients(model, named)(batch)
    projector = make_projector(name, full.shape[1], 128, seed=3)
    norms, projected = BatchedGradients(model, named).norms_and_projection(batch, projector)
    assert norms.dtype == torch.float64 and projected.dtype == torch.float32
    np.testing.assert_allclose(norms.numpy(), full.double().norm(dim=1).numpy(), rtol=1e-6)
    reference = projector.project(full)
    # sjlt sums coordinate by coordinate in a fixed order; dense is a float32 matrix product whose accumulation
    # order (so its rounding, ~1.3e-6 measured) follows the BLAS kernel and thread count: 1e-5 there.
    tolerance = 1e-5 if name == "dense" else 1e-6
    assert ((projected - reference).norm(dim=1) / reference.norm(dim=1)).max() <= tolerance


def test_dense_is_refused_when_projecting_would_cost_more_than_twice_the_backward(small_run: Path, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys):
    """The refusal is decided once and recorded (a rerun refuses with the recorded numbers, measuring nothing);
    --allow-slow-projection goes on anyway, says the estimate, and meta.json records that it was allowed."""
    run = _copy_run(small_run, tmp_path)
    options = FeaturesOptions(proj_dim=64, chunk_size=32, projector="dense", force=True)
    monkeypatch.setattr(DenseProjector, "estimate_seconds", lambda self, batch=1: 1e6)  # as at 134M numbers
    with pytest.raises(TiveError, match=r"--projector dense: projecting a batch of \d+ would take ~1e\+06 s.*sjlt"
                                        r".*--allow-slow-projection"):
        run_features(run, options)
    recorded = json.loads((run / "features" / "projection_check.json").read_text())
    assert recorded["accepted"] is False and recorded["projecting_seconds"] == 1e6
    monkeypatch.setattr(DenseProjector, "estimate_seconds", lambda self, batch=1: pytest.fail("measured again"))
    with pytest.raises(TiveError, match=r"would take ~1e\+06 s"):
        run_features(run, FeaturesOptions(**{**options.__dict__, "force": False}))
    capsys.readouterr()
    meta = run_features(run, FeaturesOptions(**{**options.__dict__, "force": False, "allow_slow_projection": True}))
    assert "--allow-slow-projection: projecting a batch of" in capsys.readouterr().out
    assert meta["complete"] and meta["request"]["projector"]["type"] == "dense"
    assert meta["projection_check"]["accepted"] is False and meta["projection_check"]["allowed"] is True
    assert "allow_slow_projection" not in meta["request"]  # it changes no number: not part of the request


def test_the_dense_decision_is_made_once_for_every_process(small_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Shard 0 measures and accepts; shard 1, whose own measurement would refuse (a borderline case measured
    otherwise on another process), follows the recorded decision instead of deciding again."""
    run = _copy_run(small_run, tmp_path)
    shutil.rmtree(run / "features")
    options = FeaturesOptions(proj_dim=64, chunk_size=32, projector="dense")
    monkeypatch.setattr(DenseProjector, "estimate_seconds", lambda self, batch=1: 0.0)
    run_features(run, FeaturesOptions(**{**options.__dict__, "shard": "0/2"}))
    monkeypatch.setattr(DenseProjector, "estimate_seconds", lambda self, batch=1: 1e6)
    meta = run_features(run, FeaturesOptions(**{**options.__dict__, "shard": "1/2"}))
    assert meta["complete"]
    assert meta["projection_check"]["accepted"] is True and meta["projection_check"]["decided_by"] == \
        "shard 0 of 2 (shard)"


def test_a_float16_store_holds_unit_rows_with_the_float32_stores_directions(small_run: Path, tmp_path: Path):
    """float16 rows are the projected gradients scaled to unit length (safe from overflow and subnormals at any
    gradient scale); their directions, all the scores use, are float32's to float16 precision."""
    run16, run32 = _copy_run(small_run, tmp_path / "a"), _copy_run(small_run, tmp_path / "b")
    run_features(run16, FeaturesOptions(proj_dim=64, chunk_size=32, force=True))
    run_features(run32, FeaturesOptions(proj_dim=64, chunk_size=32, feature_dtype="float32", force=True))
    x16 = np.load(run16 / "features" / "features.npy").astype(np.float64)
    x32 = np.load(run32 / "features" / "features.npy").astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(x16, axis=1), 1.0, atol=2e-3)
    unit32 = x32 / np.linalg.norm(x32, axis=1, keepdims=True)
    np.testing.assert_allclose(x16, unit32, atol=1e-3)
    assert np.abs(np.linalg.norm(x32, axis=1) - 1).max() > 0.1  # float32 keeps the projections as they are
    np.testing.assert_array_equal(np.load(run16 / "features" / "norms.npy"), np.load(run32 / "features" / "norms.npy"))


def test_a_record_whose_gradient_is_not_finite_is_skipped_and_named(small_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys):
    run = _copy_run(small_run, tmp_path)
    real = BatchedGradients.norms_and_projection
    poisoned = []

    def first_record_nan(self, inputs, projector):
        norms, projected = real(self, inputs, projector)
        if not poisoned:
            poisoned.append(True)
            norms[0] = float("nan")
        return norms, projected

    monkeypatch.setattr(BatchedGradients, "norms_and_projection", first_record_nan)
    meta = run_features(run, FeaturesOptions(proj_dim=64, chunk_size=32, grad_batch_size=4, force=True))
    assert len(meta["skipped"]) == 1
    (index, reason), = meta["skipped"].items()
    assert "not finite" in reason and "1 of 140 records skipped" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert rows[int(index)]["status"].startswith("skipped: features: its gradient is not finite")
    assert np.isfinite(np.load(run / "features" / "norms.npy")).all()


def test_out_of_memory_says_what_to_lower(small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = _copy_run(small_run, tmp_path)

    def out_of_memory(self, inputs, projector):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(BatchedGradients, "norms_and_projection", out_of_memory)
    with pytest.raises(TiveError, match=r"out of memory on cpu with a gradient batch of \d+ records.*lower "
                                        r"--grad-batch-size \(now 6\).*--gradient-checkpointing"):
        run_features(run, FeaturesOptions(proj_dim=64, chunk_size=32, grad_batch_size=6, force=True))


def test_negative_loader_workers_are_refused(small_run: Path, tmp_path: Path):
    run = _copy_run(small_run, tmp_path)
    with pytest.raises(TiveError, match="--loader-workers -1: must be at least 0"):
        run_features(run, FeaturesOptions(proj_dim=64, loader_workers=-1))


def test_the_automatic_batch_is_probed_with_the_longest_record_of_the_whole_share(small_run: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    """The automatic gradient batch is measured on the longest record (by `length_order`'s measure: images, then
    characters) of everything this process computes, not of its first chunk's first 256: a later, longer chunk
    would otherwise run out of memory mid-run. A shard whose longest record is in a later chunk shows which."""
    import tive.features.extract as extract
    from tive.model.data import length_order
    from tive.rundir import load_prepared

    run = _copy_run(small_run, tmp_path)
    shutil.rmtree(run / "features")
    records = load_prepared(run)[0].records
    size = 32
    chunks = [records[start : start + size] for start in range(0, len(records), size)]
    for world in (2, 3, 4):
        for shard in range(world):
            share = [record for chunk in chunks[shard::world] for record in chunk]
            longest = share[length_order(share)[-1]]
            if longest not in chunks[shard]:
                break
        else:
            continue
        break
    assert longest not in chunks[shard]  # the case the old probe missed exists in this data
    probed = []

    def choose(requested, job, given):
        probed.append(given[length_order(given)[-1]].index)
        return 4, "batch 4 (test)"

    monkeypatch.setattr(extract, "choose_batch_size", choose)
    run_features(run, FeaturesOptions(proj_dim=64, chunk_size=size, shard=f"{shard}/{world}"))
    assert probed == [longest.index]
