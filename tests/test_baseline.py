"""`tive baseline`: a random or stratified subset of the selection's size, in the input's format."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from tive.baseline import draw_baseline, run_baseline
from tive.cli import main
from tive.errors import TiveError
from tive.io import read_json, read_jsonl


@pytest.fixture()
def run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run (the session's run must not change)."""
    return Path(shutil.copytree(small_run, tmp_path / "run"))


def _input(run_dir: Path) -> list[dict]:
    return json.loads(Path(read_json(run_dir / "prepare.json")["data"]).read_text())


def test_random_baseline_has_the_subsets_size_of_distinct_eligible_input_records(run_copy: Path) -> None:
    data = _input(run_copy)
    before = Path(read_json(run_copy / "prepare.json")["data"]).read_bytes()
    assert main(["baseline", str(run_copy), "--method", "random"]) == 0
    subset = json.loads((run_copy / "subset.json").read_text())
    baseline = json.loads((run_copy / "baselines" / "random.json").read_text())
    assert len(baseline) == len(subset)
    positions = [data.index(record) for record in baseline]  # each is an input record, unchanged
    assert len(set(positions)) == len(baseline) and positions == sorted(positions)  # distinct, in input order
    ok = {row["index"] for row in read_jsonl(run_copy / "manifest.jsonl") if row["status"] == "ok"}
    assert set(positions) <= ok
    assert positions != sorted(data.index(record) for record in subset)  # not the selection itself
    entry = read_json(run_copy / "baselines.json")["random"]
    assert entry["file"] == "baselines/random.json" and entry["records"] == len(subset) and entry["seed"] == 0
    assert entry["per_task"] == dict(sorted(Counter(record["dataset"] for record in baseline).items()))
    assert Path(read_json(run_copy / "prepare.json")["data"]).read_bytes() == before  # input only read
    page = (run_copy / "report.html").read_text()
    assert 'id="baselines"' in page and "baselines/random.json" in page


def test_stratified_baseline_keeps_the_inputs_task_shares_exactly(run_copy: Path) -> None:
    from tive.select import largest_remainder

    run_baseline(run_copy, "stratified", seed=3)
    baseline = json.loads((run_copy / "baselines" / "stratified-seed3.json").read_text())
    rows = [row for row in read_jsonl(run_copy / "manifest.jsonl") if row["status"] == "ok"]
    sizes = Counter(row["task"] for row in rows)
    expected = largest_remainder({t: Fraction(len(baseline) * n, len(rows)) for t, n in sizes.items()}, len(baseline))
    assert Counter(record["dataset"] for record in baseline) == Counter({t: n for t, n in expected.items() if n})
    again = run_baseline(run_copy, "stratified", seed=3)
    assert json.loads((run_copy / "baselines" / "stratified-seed3.json").read_text()) == baseline  # seeded
    other = run_baseline(run_copy, "stratified", seed=4)
    assert other["file"] == "baselines/stratified-seed4.json" and other["per_task"] == again["per_task"]
    assert json.loads((run_copy / "baselines" / "stratified-seed4.json").read_text()) != baseline
    assert set(read_json(run_copy / "baselines.json")) == {"stratified-seed3", "stratified-seed4"}


def test_baseline_leaves_out_the_tasks_the_selection_excluded(run_copy: Path) -> None:
    from tive.config import SelectOptions
    from tive.stages import run_select

    run_select(run_copy, SelectOptions(budget="0.2", select_seed=5, exclude_task=["color"]))
    entry = run_baseline(run_copy, "random", seed=1)
    baseline = json.loads((run_copy / "baselines" / "random-seed1.json").read_text())
    assert "color" not in {record["dataset"] for record in baseline}
    assert entry["excluded"] == ["color"]
    assert len(baseline) == len(json.loads((run_copy / "subset.json").read_text()))


def test_baseline_needs_a_selection(small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tive.config import PrepareOptions
    from tive.stages import run_prepare

    run_prepare(small_data, tmp_path / "run", PrepareOptions(images=str(small_data.parent / "images"),
                                                             task_field="dataset"))
    assert main(["baseline", str(tmp_path / "run"), "--method", "random"]) == 2
    err = capsys.readouterr().err
    assert "tive select" in err and "Traceback" not in err


def test_draw_refuses_more_records_than_are_eligible() -> None:
    with pytest.raises(TiveError, match="only 3 records are eligible"):
        draw_baseline(["a", "a", "b"], 4, "random", 0)
    assert sorted(draw_baseline(["a", "a", "b"], 3, "stratified", 0).tolist()) == [0, 1, 2]
    counts = Counter(["a"] * 7 + ["b"] * 2 + ["c"] * 1)
    tasks = ["a"] * 7 + ["b"] * 2 + ["c"]
    picks = draw_baseline(tasks, 5, "stratified", 0)
    assert Counter(tasks[i] for i in picks) == Counter({"a": 4, "b": 1})  # 3.5, 1.0, 0.5 -> a gets the unit
    assert sum(counts.values()) == 10


def test_baselines_are_written_in_the_inputs_format_by_the_subsets_writer(tmp_path: Path) -> None:
    """A named output (`tive baseline`'s) is the subset writer's output, with the input's suffix or a directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tive.data.formats import write_subset_from_input

    records = [{"id": i, "conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "A"}]}
               for i in range(3)]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    for path, fmt, suffix in ((jsonl, "jsonl", ".jsonl"), (parquet, "parquet", ".parquet")):
        subset = write_subset_from_input(path, fmt, [1, 0, 1], tmp_path / "run")
        named = write_subset_from_input(path, fmt, [1, 0, 1], tmp_path / "run" / "baselines", name="random-seed2")
        assert subset.name == f"subset{suffix}" and named.name == f"random-seed2{suffix}"
        if fmt == "jsonl":
            assert named.read_bytes() == subset.read_bytes()
        else:
            assert pq.read_table(named).to_pylist() == pq.read_table(subset).to_pylist() == [records[0], records[2]]
