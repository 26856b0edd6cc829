"""`tive bench --quick` end to end, as CI runs it (about 5.5 min on 2 cores shared with other jobs: the slot prior,
then the clean and the mixed world at one seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.cli import main


@pytest.mark.timeout(1500)
def test_quick_bench(tmp_path: Path) -> None:
    assert main(["bench", "--out", str(tmp_path), "--quick", "--world-seed", "5"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["worlds"] == ["clean", "mixed"] and results["world_seed"] == 5
    # The default plan: full, random, random_stratified and tive in each world, the two controls where the world
    # has known defects; every subset at 15% under equal steps.
    methods = {world: {run["method"] for run in results["runs"] if run["world"] == world} for world in results["worlds"]}
    assert methods["clean"] == {"full", "random", "random_stratified", "tive"}
    assert methods["mixed"] == methods["clean"] | {"clean_oracle", "task_oracle"}
    full_steps = {run["steps"] for run in results["runs"] if run["method"] == "full"}
    assert {run["steps"] for run in results["runs"]} == full_steps and len(full_steps) == 1
    assert {run["recipe"] for run in results["runs"]} == {"steps"}
    assert {run["budget"] for run in results["runs"] if run["method"] != "full"} == {0.15}
    # Each benchmark's chance level; the defect table of the mixed world; one base for both worlds.
    assert set(results["chance"]) == set(results["benchmarks"])
    assert results["defects"]["clean"] == {} and set(results["defects"]["mixed"]) == methods["mixed"] - {"full"}
    assert results["defects"]["mixed"]["clean_oracle"]["chosen_share"]["wrong_answer"] == 0.0
    for world in results["worlds"]:
        assert (tmp_path / world / "results.png").stat().st_size > 1000
        assert "| chance | - |" in (tmp_path / world / "results.md").read_text()
    assert "Known defects" in (tmp_path / "results.md").read_text()
    assert results["timing"]["worlds"]["mixed"]["base_model_cached"] is True
