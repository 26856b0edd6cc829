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
from tive.features.grads import record_gradient
from tive.features.projection import RademacherProjector
from tive.model.encode import collate, encode_record
from tive.model.loading import load_with_adapter, lora_parameters
from tive.rundir import load_prepared
from tive.stages import run_features


def test_record_gradient_is_the_gradient_of_the_mean_answer_loss(small_run: Path):
    """Checked against transformers' own loss (mean cross-entropy over labelled tokens) and .backward()."""
    model, processor = load_with_adapter(small_run / "base_model", small_run / "warmup" / "adapter", "cpu")
    params = [p for _, p in lora_parameters(model)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
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


def test_rademacher_projection_preserves_inner_products_and_norms():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(6, 4096, generator=gen)
    grads[1] = grads[0] + 0.3 * grads[1]  # a correlated pair
    projector = RademacherProjector(4096, 2048, seed=7)
    projected = projector.project(grads)
    assert projected.shape == (6, 2048)
    norms, pnorms = grads.norm(dim=1), projected.norm(dim=1)
    assert torch.allclose(pnorms, norms, rtol=0.08)
    cos = torch.nn.functional.cosine_similarity(grads[:, None], grads[None], dim=-1)
    pcos = torch.nn.functional.cosine_similarity(projected[:, None], projected[None], dim=-1)
    assert (pcos - cos).abs().max() < 0.1
    assert pcos[0, 1] > 0.9  # the correlated pair stays correlated


def test_rademacher_projection_is_seeded_and_independent_of_caching():
    grads = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    cached = RademacherProjector(1000, 300, seed=3)
    streamed = RademacherProjector(1000, 300, seed=3, block_bytes=4 * 1000 * 7, cache_bytes=0)
    assert cached._cached is not None and streamed._cached is None
    eye = torch.eye(1000)
    assert torch.equal(cached.project(eye), streamed.project(eye))  # the same matrix, entry for entry
    torch.testing.assert_close(cached.project(grads), streamed.project(grads), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached.project(grads), RademacherProjector(1000, 300, seed=4).project(grads))
    assert RademacherProjector(1000, 5000, seed=0).proj_dim == 1000  # capped at the gradient size


def _copy_run(small_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


def test_features_resume_redoes_only_missing_chunks_and_is_byte_identical(small_run: Path, tmp_path: Path):
    run = _copy_run(small_run, tmp_path)
    features = run / "features"
    original_x = (features / "features.npy").read_bytes()
    original_n = (features / "norms.npy").read_bytes()
    chunk_files = sorted((features / "chunks").glob("*.npy"))
    kept = {p.name: p.stat().st_mtime_ns for p in chunk_files if "000001" not in p.name}
    # Simulate a run killed after some chunks: no merged arrays, meta not complete, chunk 1 missing.
    for name in ("features.npy", "norms.npy"):
        (features / name).unlink()
    (features / "chunks" / "chunk_000001.norm.npy").unlink()
    meta = json.loads((features / "meta.json").read_text())
    (features / "meta.json").write_text(json.dumps({**meta, "complete": False}))

    from tests.conftest import small_options

    run_features(run, small_options(Path(json.loads((run / "prepare.json").read_text())["data"]))[2])
    assert (features / "features.npy").read_bytes() == original_x
    assert (features / "norms.npy").read_bytes() == original_n
    for p in sorted((features / "chunks").glob("*.npy")):
        if p.name in kept:
            assert p.stat().st_mtime_ns == kept[p.name], f"{p.name} was recomputed"


def test_features_refuse_other_projection_unless_forced(small_run: Path, tmp_path: Path):
    run = _copy_run(small_run, tmp_path)
    other = FeaturesOptions(proj_dim=64, proj_seed=1, chunk_size=32)
    with pytest.raises(TiveError, match="other projector.*--force"):
        run_features(run, other)
    run_features(run, FeaturesOptions(proj_dim=64, proj_seed=1, chunk_size=32, force=True))
    assert np.load(run / "features" / "features.npy").shape[1] == 64
    assert json.loads((run / "features" / "meta.json").read_text())["projector"]["seed"] == 1
