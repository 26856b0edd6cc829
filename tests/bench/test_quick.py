"""`tive bench --quick` end to end, as CI runs it (about 1.5 minutes on 2 idle cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tive.cli import main


@pytest.mark.timeout(900)
def test_quick_bench(tmp_path: Path) -> None:
    assert main(["bench", "--out", str(tmp_path), "--quick", "--world-seed", "5"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = {run["method"] for run in results["runs"]}
    assert {"full", "random", "tive", "random_stratified", "tive_task_only", "tive_instance_only", "grad_norm",
            "el2n", "length"} == methods
    assert (tmp_path / "results.png").stat().st_size > 1000
    # Each benchmark's chance level is reported, and the verdict on the full-data run is in the table.
    assert set(results["chance"]) == set(results["benchmarks"])
    assert results["at_chance"]["chance_average"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| chance | - |" in table
    if results["at_chance"]["average_at_chance"]:
        assert "% of full is not meaningful" in table and "| n/m |" in table
