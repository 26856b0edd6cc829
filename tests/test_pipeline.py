"""The run-directory contract, checked the way an outside checker would, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL_PROJ_DIM, SMALL_RECORDS, small_options
from tive.cli import main
from tive.config import SelectOptions
from tive.errors import TiveError
from tive.stages import run_all, run_select


def manifest(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


def test_run_directory_holds_exactly_the_documented_files(small_run: Path):
    top = {p.name for p in small_run.iterdir()}
    assert top == {
        "prepare.json", "manifest.jsonl", "base_model", "warmup", "features", "tasks.json", "select.json", "subset.json", "tive.log",
        "config.yaml", "report.html", "records_index.npz",
    }
    assert {p.name for p in (small_run / "warmup").iterdir()} == {"adapter", "train_log.jsonl", "warmup.json"}
    assert {p.name for p in (small_run / "warmup" / "adapter").iterdir()} >= {
        "adapter_model.safetensors", "adapter_config.json"
    }
    # The chunks are removed once merged: the store on disk is the final arrays.
    assert {p.name for p in (small_run / "features").iterdir()} == {"features.npy", "norms.npy", "meta.json"}
    assert not list(small_run.rglob("*.tmp"))


def test_manifest_accounts_for_every_input_record_in_order(small_run: Path, small_data: Path):
    rows = manifest(small_run)
    records = json.loads(small_data.read_text())
    assert len(rows) == len(records) == SMALL_RECORDS
    for i, (row, record) in enumerate(zip(rows, records)):
        assert list(row) == ["index", "id", "task", "status", "grad_norm", "value", "selected"]
        assert (row["index"], row["id"], row["task"], row["status"]) == (i, record["id"], record["dataset"], "ok")
        assert row["grad_norm"] > 0 and -1 <= row["value"] <= 1 and row["selected"] in (0, 1)


def test_features_match_manifest_and_meta(small_run: Path):
    rows = manifest(small_run)
    features = np.load(small_run / "features" / "features.npy", mmap_mode="r")
    norms = np.load(small_run / "features" / "norms.npy")
    meta = json.loads((small_run / "features" / "meta.json").read_text())
    assert features.shape == (len(rows), SMALL_PROJ_DIM) and features.dtype == np.float16  # the default store
    np.testing.assert_allclose(norms, [r["grad_norm"] for r in rows], rtol=1e-12)
    assert meta["complete"] and meta["proj_dim"] == SMALL_PROJ_DIM and meta["request"]["projector"]["type"] == "sjlt"
    assert meta["grad_dim"] > SMALL_PROJ_DIM and meta["records"] == len(rows) and meta["skipped"] == {}
    warm = json.loads((small_run / "warmup" / "warmup.json").read_text())
    assert meta["request"]["adapter_sha256"] == warm["adapter_sha256"]
    assert meta["request"]["encoding_version"] == warm["settings"]["encoding_version"] == 2
    assert meta["encoding"] == warm["encoding"] == {"version": 2, "bos": "template", "end_of_turn": "template"}


def test_instance_values_recomputed_from_features_by_their_definition(small_run: Path):
    rows = manifest(small_run)
    features = np.load(small_run / "features" / "features.npy").astype(np.float64)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    by_task = defaultdict(list)
    for i, row in enumerate(rows):
        by_task[row["task"]].append(i)
    for members in by_task.values():
        cos = unit[members] @ unit[members].T
        # float16 features are scored with float32 products: agreement to ~1e-6, far below float16's own rounding.
        np.testing.assert_allclose([rows[i]["value"] for i in members], cos.mean(axis=1), atol=2e-6)


def _reference_budgets(values: dict[str, float], sizes: dict[str, int], total: int) -> dict[str, int]:
    """Independent reference: water-filling of value-proportional shares, then largest remainder."""
    fixed, active, left = {}, dict(values), total
    while True:
        weight = sum(Fraction(v) for v in active.values())
        full = [t for t, v in active.items() if left * Fraction(v) / weight >= sizes[t]]
        if not full:
            break
        for t in full:
            fixed[t] = sizes[t]
            left -= sizes[t]
            del active[t]
    weight = sum(Fraction(v) for v in active.values())
    shares = {t: left * Fraction(v) / weight for t, v in active.items()}
    out = {t: int(s) for t, s in shares.items()}
    for t in sorted(shares, key=lambda t: (-(shares[t] - int(shares[t])), t))[: left - sum(out.values())]:
        out[t] += 1
    return {**out, **fixed}


def test_task_budgets_recomputed_from_grad_norms(small_run: Path):
    rows = manifest(small_run)
    tasks = json.loads((small_run / "tasks.json").read_text())
    norms = defaultdict(list)
    for row in rows:
        norms[row["task"]].append(row["grad_norm"])
    values = {t: float(np.mean(v)) for t, v in norms.items()}
    total = round(0.2 * len(rows))
    expected = _reference_budgets(values, {t: len(v) for t, v in norms.items()}, total)
    for task, info in tasks.items():
        assert info["value"] == pytest.approx(values[task], rel=1e-12)
        assert info["records"] == len(norms[task])
        assert info["budget"] == expected[task] == info["selected"]
        assert info["selected"] == sum(r["selected"] for r in rows if r["task"] == task)
    assert sum(r["selected"] for r in rows) == total


def test_subset_is_the_selected_input_records_unchanged(small_run: Path, small_data: Path):
    records = json.loads(small_data.read_text())
    subset = json.loads((small_run / "subset.json").read_text())
    chosen = [records[r["index"]] for r in manifest(small_run) if r["selected"]]
    assert subset == chosen
    assert len({json.dumps(r, sort_keys=True) for r in subset}) == len(subset)  # no duplicates


def test_warmup_log_and_sample(small_run: Path):
    warm = json.loads((small_run / "warmup" / "warmup.json").read_text())
    log = [json.loads(line) for line in (small_run / "warmup" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == warm["steps"] and [e["step"] for e in log] == list(range(1, len(log) + 1))
    assert warm["loss_last"] < warm["loss_first"]
    tasks = [manifest(small_run)[i]["task"] for i in warm["warmup_indices"]]
    assert len(tasks) == round(0.08 * SMALL_RECORDS)
    counts = sorted({t: tasks.count(t) for t in set(tasks)}.values())
    assert counts[-1] - counts[0] <= 1  # equal per task


def _copy(small_run: Path, tmp_path: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(small_run, run)
    return run


def test_select_is_seeded_and_rerun_of_run_all_skips_finished_stages(small_run: Path, small_data: Path, tmp_path):
    run = _copy(small_run, tmp_path)
    first = (run / "subset.json").read_bytes()
    warm_before = (run / "warmup" / "warmup.json").read_bytes()
    run_all(small_data, run, *small_options(small_data))  # same settings: skips prepare/warmup/features
    assert (run / "warmup" / "warmup.json").read_bytes() == warm_before
    assert (run / "subset.json").read_bytes() == first
    run_select(run, SelectOptions(budget="0.2", select_seed=6))
    assert (run / "subset.json").read_bytes() != first
    prepare, warmup, features, select = small_options(small_data)
    warmup.seed = 6
    with pytest.raises(TiveError, match=r"other settings \(seed\).*tive select"):
        run_all(small_data, run, prepare, warmup, features, select)


def test_select_top_with_a_count_and_excluded_task(small_run: Path, tmp_path: Path):
    run = _copy(small_run, tmp_path)
    assert main(["select", str(run), "--budget", "30", "--choose", "top", "--exclude-task", "color"]) == 0
    rows = manifest(run)
    tasks = json.loads((run / "tasks.json").read_text())
    assert sum(r["selected"] for r in rows) == 30
    assert tasks["color"]["budget"] == 0 and tasks["color"]["excluded"]
    for task, info in tasks.items():
        members = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["value"])
        assert [r["selected"] for r in members] == [1] * info["budget"] + [0] * (len(members) - info["budget"])


def test_oversample_repeats_records_only_when_asked(small_run: Path, tmp_path: Path, capsys):
    run = _copy(small_run, tmp_path)
    assert main(["select", str(run), "--budget", str(SMALL_RECORDS + 10)]) == 2
    assert "--oversample" in capsys.readouterr().err
    assert main(["select", str(run), "--budget", str(SMALL_RECORDS + 10), "--oversample"]) == 0
    rows = manifest(run)
    assert sum(r["selected"] for r in rows) == SMALL_RECORDS + 10 and max(r["selected"] for r in rows) >= 2
    assert len(json.loads((run / "subset.json").read_text())) == SMALL_RECORDS + 10


def test_skipped_records_are_accounted_for_and_never_selected(small_data: Path, tmp_path: Path):
    records = json.loads(small_data.read_text())[:60]
    records[3]["image"] = "nowhere/missing.png"
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = data.read_bytes()
    prepare, warmup, features, select = small_options(small_data)
    features.proj_dim = 64
    select.budget = "0.5"
    run_all(data, tmp_path / "run", prepare, warmup, features, select)
    rows = manifest(tmp_path / "run")
    assert rows[3]["status"].startswith("skipped: missing image") and rows[3]["selected"] == 0
    assert rows[3]["grad_norm"] is None and rows[3]["value"] is None
    assert np.load(tmp_path / "run" / "features" / "features.npy").shape == (59, 64)
    assert sum(r["selected"] for r in rows) == round(0.5 * 59)
    lines = data.read_text().splitlines()
    subset = (tmp_path / "run" / "subset.jsonl").read_text().splitlines()
    assert subset == [lines[r["index"]] for r in rows if r["selected"]]  # JSONL in kind, lines unchanged
    assert data.read_bytes() == before


def test_cli_reports_bad_records_without_traceback(tmp_path: Path, capsys):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}]},
    ]))
    assert main(["prepare", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "record 1" in err and "'b'" in err and "conversations" in err
    assert "Traceback" not in err


def test_a_missing_image_is_skipped_and_named_or_an_error_when_asked(small_data: Path, tmp_path: Path, capsys):
    records = json.loads(small_data.read_text())[:5]
    with_image = next(i for i, r in enumerate(records) if "image" in r)
    records[with_image]["image"] = "gone.png"
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    images = str(small_data.parent / "images")
    assert main(["prepare", str(data), "--out", str(tmp_path / "run"), "--images", images]) == 0
    out = capsys.readouterr().out
    assert f"record {with_image}" in out and "gone.png" in out and "1 of" in out
    rows = manifest(tmp_path / "run")
    assert rows[with_image]["status"].startswith("skipped: missing image") and "gone.png" in rows[with_image]["status"]
    assert [r["status"] for i, r in enumerate(rows) if i != with_image] == ["ok"] * 4
    code = main(["prepare", str(data), "--out", str(tmp_path / "run2"), "--images", images, "--on-bad-record", "error"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"record {with_image}" in err and "gone.png" in err and "--on-bad-record skip" in err
    assert "Traceback" not in err


def test_a_wrong_image_root_stops_instead_of_skipping_everything(small_data: Path, tmp_path: Path, capsys):
    records = [r for r in json.loads(small_data.read_text()) if "image" in r][:30]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(data), "--out", str(tmp_path / "run"), "--images", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "could not be used" in err and "--max-bad-fraction" in err and "record 0" in err
    assert not (tmp_path / "run" / "prepare.json").exists()


def test_stage_order_is_enforced_with_a_clear_message(small_data: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(small_data), "--out", str(run), "--images", str(small_data.parent / "images")]) == 0
    assert main(["features", str(run)]) == 2
    assert "run `tive warmup" in capsys.readouterr().err
    assert main(["select", str(run)]) == 2
    assert "tive score" in capsys.readouterr().err


def test_python_dash_m_tive_shows_every_command():
    out = subprocess.run([sys.executable, "-m", "tive", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "demo", "bench", "prepare", "warmup", "features", "score", "select"):
        assert command in out


def test_prepare_with_llava665k_rules_writes_the_recovered_tasks(tmp_path: Path):
    from tests.data.test_data_tasks import MIX_665K

    mix = [(task, raw) for task, raw in MIX_665K if not str(raw.get("image", "")).startswith("/")]
    data = tmp_path / "mix665k.json"
    data.write_text(json.dumps([raw for _, raw in mix]))
    run = tmp_path / "run"
    args = ["prepare", str(data), "--out", str(run), "--task-rules", "llava665k", "--images", str(tmp_path)]
    assert main([*args, "--max-bad-fraction", "1"]) == 0  # no image is there: skip them all, on purpose
    rows = manifest(run)
    assert [r["task"] for r in rows] == [task for task, _ in mix]
    assert len({r["task"] for r in rows}) == 9


@pytest.mark.parametrize("command", ["run", "demo", "bench", "prepare", "warmup", "features", "score", "select", "estimate"])
def test_every_command_has_working_help(command: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tive " + command in capsys.readouterr().out


def test_the_end_of_a_run_says_where_the_results_are_and_how_to_train_on_them(small_run: Path):
    from tive.stages.select import what_next

    text = what_next(small_run)
    assert f"subset:  {small_run / 'subset.json'}" in text and str(small_run / "manifest.jsonl") in text
    # the trainers' settings come from `tive export` (written and checked there), not from a hand-copied hint
    assert f"tive export {small_run} --for llama-factory (or --for llava)" in text
    assert f"tive baseline {small_run} --method random" in text and "tive compare" in text


def test_select_choose_diverse_on_a_run(small_run: Path, tmp_path: Path, capsys):
    """`tive select --choose diverse` reads the run's features, says so, meets the budget in every task and is
    reproducible; it takes records other than the value-ranked `top` choice."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    assert main(["select", str(run), "--choose", "diverse", "--budget", "0.2"]) == 0
    assert "--choose diverse: 140 feature rows reduced to 256 dims" in capsys.readouterr().out
    rows = manifest(run)
    tasks = json.loads((run / "tasks.json").read_text())
    assert sum(r["selected"] for r in rows) == 28 and max(r["selected"] for r in rows) == 1
    for name, info in tasks.items():
        assert sum(r["selected"] for r in rows if r["task"] == name) == info["budget"] == info["selected"]
    assert json.loads((run / "select.json").read_text())["effective"]["choose"] == "diverse"
    diverse = [r["selected"] for r in rows]
    assert main(["select", str(run), "--choose", "diverse", "--budget", "0.2"]) == 0
    assert [r["selected"] for r in manifest(run)] == diverse
    assert main(["select", str(run), "--choose", "top", "--budget", "0.2"]) == 0
    assert [r["selected"] for r in manifest(run)] != diverse
