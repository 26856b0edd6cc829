"""`tive bench --quick` end to end, as CI runs it (197 s on 2 cores shared with other jobs, with the slot prior)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.bench.methods import METHODS
from tive.cli import main


@pytest.mark.timeout(900)
def test_quick_bench(tmp_path: Path) -> None:
    assert main(["bench", "--out", str(tmp_path), "--quick", "--world-seed", "5"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = {run["method"] for run in results["runs"]}
    assert set(METHODS) | {"full"} == methods
    # Both recipes: every subset under equal steps and under equal epochs (a 15% subset gets 15% of the steps).
    steps = {(run["method"], run["recipe"]): run["steps"] for run in results["runs"] if run["method"] != "full"}
    full_steps = next(run["steps"] for run in results["runs"] if run["method"] == "full")
    assert {steps[(m, "steps")] for m in METHODS} == {full_steps}
    assert {steps[(m, "epochs")] for m in METHODS} == {round(full_steps * 0.15)}
    assert (tmp_path / "results.png").stat().st_size > 1000
    # Each benchmark's chance level is reported, and the verdict on the full-data run is in the table.
    assert set(results["chance"]) == set(results["benchmarks"])
    assert results["at_chance"]["chance_average"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| chance | - |" in table
    if results["at_chance"]["average_at_chance"]:
        assert "% of full is not meaningful" in table and "| n/m |" in table
