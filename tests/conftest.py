"""Shared fixtures: a small generated dataset and one pipeline run over it, reused by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tive.config import FeaturesOptions, PrepareOptions, SelectOptions, WarmupOptions

SMALL_RECORDS = 140
SMALL_PROJ_DIM = 512


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 140-record multi-task LLaVA-format dataset with images (the demo generator)."""
    from tive.demo_data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("small_data"), n_records=SMALL_RECORDS, seed=3)


def small_options(data: Path) -> tuple[PrepareOptions, WarmupOptions, FeaturesOptions, SelectOptions]:
    return (
        PrepareOptions(images=str(data.parent / "images"), task_field="dataset"),
        WarmupOptions(model="tiny", seed=1, epochs=2),
        FeaturesOptions(proj_dim=SMALL_PROJ_DIM, chunk_size=32),
        SelectOptions(budget="0.2", select_seed=5),
    )


@pytest.fixture(scope="session")
def small_run(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run directory over `small_data` (every stage). Tests must not modify it."""
    from tive.stages import run_all

    run_dir = tmp_path_factory.mktemp("small_run") / "run"
    run_all(small_data, run_dir, *small_options(small_data))
    return run_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model, saved with its processor."""
    from tive.model.tiny import build_tiny_model

    texts = ["What color is the shape? red blue green", "How many circles are there? 1 2 3 4", "Describe it."] * 20
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, seed=0)
