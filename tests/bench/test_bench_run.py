"""The bench end to end on a very small world: outputs, results.json schema, equal budgets, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tive.bench.model import BaseSettings, Recipe
from tive.bench.runner import Plan, SelectionSettings, run_bench, world_inputs
from tive.bench.world import WorldSizes
from tive.errors import TiveError

SIZES = WorldSizes(train=120, align=24, eval=4)
PLAN = Plan(budgets=(0.15,), seeds=(0,), ablations=("grad_norm",),
            recipe=Recipe(steps=4, batch_size=16), workers=1)
BASE = BaseSettings(seed=0, vision_steps=5, epochs=1, batch_size=16)
SELECTION = SelectionSettings(proj_dim=64, epochs=1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "out"
    inputs = world_inputs(out, seed=1, sizes=SIZES)
    return out, run_bench(out, inputs, PLAN, BASE, SELECTION)


def test_outputs_and_schema(bench: tuple[Path, dict]) -> None:
    out, _ = bench
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"] == ["vqav2", "gqa", "textvqa", "pope", "mmbench", "refcoco"]
    expected = {("full", 1.0), ("tive", 0.15), ("random", 0.15), ("grad_norm", 0.15)}
    assert {(r["method"], r["budget"]) for r in results["runs"]} == expected
    for run in results["runs"]:
        assert {"method", "budget", "seed", "scores", "average"} <= set(run)
        assert set(run["scores"]) == set(results["benchmarks"])
        assert all(0.0 <= v <= 100.0 for v in run["scores"].values())
        assert run["average"] == pytest.approx(sum(run["scores"].values()) / len(run["scores"]))
        assert run["seed"] == 0
    assert "| full | 100% |" in (out / "results.md").read_text()
    assert results["timing"]["selection"]["features"] >= 0


def test_equal_budget_across_methods(bench: tuple[Path, dict]) -> None:
    _, results = bench
    sizes = {r["records"] for r in results["runs"] if r["budget"] == 0.15}
    assert sizes == {18}  # round(0.15 x 120)
    full = [r for r in results["runs"] if r["method"] == "full"]
    assert {r["records"] for r in full} == {120}


def test_rerun_resumes_without_training(bench: tuple[Path, dict]) -> None:
    out, first = bench
    started = time.perf_counter()
    again = run_bench(out, world_inputs(out, seed=1, sizes=SIZES), PLAN, BASE, SELECTION)
    assert time.perf_counter() - started < 15
    assert [r["scores"] for r in again["runs"]] == [r["scores"] for r in first["runs"]]


def test_user_data_errors(tmp_path: Path) -> None:
    from tive.cli import main

    assert main(["bench", "--out", str(tmp_path / "o"), "--eval", "x.json"]) == 2
    data = tmp_path / "train.json"
    data.write_text("[]")
    assert main(["bench", "--out", str(tmp_path / "o"), "--train", str(data)]) == 2
    assert main(["bench", "--out", str(tmp_path / "o"), "--budgets", "0.1,abc"]) == 2
