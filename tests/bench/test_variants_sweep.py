"""The sweep's decision rule (benchmarks/bench_tive_variants.py): a variant wins only where its mean gain over
TIVE's default exceeds the pooled std on every world."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tive_variants.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("bench_tive_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _world(seed: int, tive: list[float], **variants: list[float]) -> dict:
    return {"world_seed": seed, "averages": {"full": [50.0, 51.0], "random": [40.0, 41.0], "tive": tive, **variants},
            "task_sizes": {"a": 3, "b": 1}, "task_shares": {"tive": {"a": 1, "b": 1}}}


def test_a_variant_holds_only_when_it_beats_the_pooled_std_on_every_world(sweep) -> None:
    worlds = [
        _world(0, [40.0, 42.0], better=[45.0, 47.0], mixed=[45.0, 47.0], noisy=[38.0, 50.0]),
        _world(1, [40.0, 42.0], better=[44.0, 46.0], mixed=[40.0, 42.0], noisy=[38.0, 50.0]),
    ]
    rows = {row["variant"]: row for row in sweep.decide(worlds, ["better", "mixed", "noisy"])}
    assert rows["better"]["holds"] and rows["better"]["mean_gain"] == pytest.approx(4.5)
    cell = rows["better"]["worlds"][0]
    assert cell["gain"] == pytest.approx(5.0) and cell["pooled_std"] == pytest.approx(math.sqrt(2.0))
    assert not rows["mixed"]["holds"]  # a gain on one world only
    noisy = rows["noisy"]["worlds"][0]  # mean gain 3 < pooled std sqrt((72 + 2) / 2)
    assert noisy["gain"] == pytest.approx(3.0) and noisy["pooled_std"] > 3 and not rows["noisy"]["holds"]
    assert "holds" not in rows["tive"] and "holds" not in rows["full"]
    table = sweep.markdown(worlds, list(rows.values()), 0.15)
    assert "| better | 46.0 ± 1.4 (+5.0 / 1.4) | 45.0 ± 1.4 (+4.0 / 1.4) | +4.5 | yes |" in table
    assert "| input | 75 | 25 |" in table


def test_selection_variants_change_only_their_setting(sweep) -> None:
    import numpy as np

    from tive.bench.methods import Signals

    signals = Signals(tasks=["a", "a", "textcaps"], grad_norms=np.array([1.0, 3.0, 2.0]), values=np.zeros(3),
                      task_values={"a": 2.0, "textcaps": 2.0}, el2n=np.zeros(3), answer_tokens=np.ones(3))
    assert sweep.selection_variant("t1000", signals).temperature == 1000.0
    assert sweep.selection_variant("top", signals).choose == "top"
    assert sweep.selection_variant("sqnorm", signals).task_values == {"a": 5.0, "textcaps": 4.0}
    assert sweep.selection_variant("alloc_sum", signals).task_values == {"a": 4.0, "textcaps": 2.0}
    assert sweep.selection_variant("no_captions", signals).exclude_tasks == ("textcaps",)
    assert sweep.selection_variant("t1000", signals).task_values == signals.task_values
