"""The bench end to end on a very small world: outputs, results.json schema, equal budgets, resume."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tive.bench.model import BaseSettings, Recipe
from tive.bench.runner import Inputs, Plan, SelectionSettings, run_bench, run_worlds, world_inputs
from tive.bench.world import WorldSizes
from tive.errors import TiveError

SIZES = WorldSizes(train=120, align=24, eval=4, prior=30)
PLAN = Plan(budgets=(0.15,), seeds=1, ablations=("grad_norm",),
            recipe=Recipe(steps=4, batch_size=16), workers=1)
BASE = BaseSettings(seed=0, vision_steps=5, epochs=1, batch_size=16, prior_steps=3)
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
        assert {"world", "method", "budget", "recipe", "seed", "scores", "average"} <= set(run)
        assert run["world"] == "clean"
        assert set(run["scores"]) == set(results["benchmarks"])
        assert all(0.0 <= v <= 100.0 for v in run["scores"].values())
        assert run["average"] == pytest.approx(sum(run["scores"].values()) / len(run["scores"]))
        assert run["seed"] == 0
        # Each benchmark's mean log-likelihood of the reference answer, beside its accuracy.
        assert set(run["logliks"]) == set(results["benchmarks"]) and all(v < 0 for v in run["logliks"].values())
    assert "| full | 100% |" in (out / "results.md").read_text()
    assert results["timing"]["selection"]["features"] >= 0
    # Chance levels of the world's benchmarks: POPE is yes/no, MMBench four options (cloze), RefCOCO names a cell.
    assert set(results["chance"]) == set(results["benchmarks"])
    assert results["chance"]["pope"] == 50.0 and results["chance"]["mmbench"] == 25.0
    assert 0.0 < results["chance"]["refcoco"] < 100.0
    assert results["base_model"]["vision"] == "slots"
    assert "| chance | - |" in (out / "results.md").read_text()
    assert results["at_chance"]["chance_average"] == pytest.approx(sum(results["chance"].values()) / 6)


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


def test_rerun_with_other_benchmarks_scores_them(bench: tuple[Path, dict]) -> None:
    out, first = bench
    inputs = world_inputs(out, seed=1, sizes=SIZES)
    inputs.evals = [p for p in inputs.evals if p.stem in ("pope", "refcoco")]
    again = run_bench(out, inputs, PLAN, BASE, SELECTION)
    assert again["benchmarks"] == ["pope", "refcoco"]
    for run in again["runs"]:
        assert set(run["scores"]) == {"pope", "refcoco"}
        assert run["average"] == pytest.approx(sum(run["scores"].values()) / 2)
    assert again["caches"]["keys"]["encoded"] != first["caches"]["keys"]["encoded"]
    assert again["caches"]["selection"] == first["caches"]["selection"]  # the selection does not depend on them


def test_rerun_with_another_task_field_recomputes_the_selection(bench: tuple[Path, dict], tmp_path: Path) -> None:
    out, first = bench
    inputs = world_inputs(out, seed=1, sizes=SIZES)
    records = json.loads(inputs.train.read_text())
    for record in records:
        record["group"] = "with_image" if "image" in record else "text_only"
    train = tmp_path / "train_grouped.json"
    train.write_text(json.dumps(records))
    inputs.train, inputs.task_field = train, "group"
    again = run_bench(out, inputs, PLAN, BASE, SELECTION)
    assert set(again["task_sizes"]) == {"with_image", "text_only"}
    assert again["caches"]["selection"] != first["caches"]["selection"]
    assert again["caches"]["keys"]["encoded"] == first["caches"]["keys"]["encoded"]  # same records, same prompts


def test_own_data_without_align_pretrains_vision_on_the_training_images(
        bench: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world = world_inputs(bench[0], seed=1, sizes=SIZES)
    own = Inputs(world.train, world.images, "dataset", world.evals[:1], align=None)
    plan = dataclasses.replace(PLAN, ablations=())
    results = run_bench(tmp_path / "own", own, plan, BASE, SELECTION)
    said = capsys.readouterr().out
    base = results["base_model"]
    with_image = sum(1 for r in json.loads(world.train.read_text()) if "image" in r)
    assert base["vision_source"] == "training images" and base["vision_records"] == with_image > 0
    assert base["vision_steps"] == BASE.vision_steps and base["align_records"] == 0
    assert f"no --align: the base model's vision tower is pre-trained on the images of the {with_image}" in said
    assert f"vision tower on {with_image} training images, {BASE.vision_steps} bag-of-words steps" in said


def test_skipped_records_are_refused_by_name(tmp_path: Path) -> None:
    from tive.bench.runner import require_all_ok
    from tive.io import write_jsonl

    rows = [{"index": 0, "id": "a", "task": "t", "status": "ok"},
            {"index": 1, "id": "b-7", "task": "t", "status": "skipped: image cannot be encoded"}]
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    with pytest.raises(TiveError, match=r"skipped 1 of 2 training records: record 1 \(id b-7\): skipped: image "
                                        "cannot be encoded"):
        require_all_ok(tmp_path, 2)
    rows[1]["status"] = "ok"
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    assert len(require_all_ok(tmp_path, 2)) == 2
    with pytest.raises(TiveError, match="2 records in manifest.jsonl but 3"):
        require_all_ok(tmp_path, 3)


def test_user_data_errors(tmp_path: Path) -> None:
    from tive.cli import main

    assert main(["bench", "--out", str(tmp_path / "o"), "--eval", "x.json"]) == 2
    data = tmp_path / "train.json"
    data.write_text("[]")
    assert main(["bench", "--out", str(tmp_path / "o"), "--train", str(data)]) == 2
    assert main(["bench", "--out", str(tmp_path / "o"), "--budgets", "0.1,abc"]) == 2


def test_worlds_share_one_base_and_the_controls_run_where_defects_are(tmp_path: Path) -> None:
    # Issue 19, items 4-7: clean and mixed in one run; one base model (trained once) serves both; the controls run
    # in the world with known defects only; results.json holds every run with its world and the defect table.
    plan = dataclasses.replace(PLAN, ablations=("clean_oracle", "task_oracle", "tive_lastk"))
    out = tmp_path / "both"
    results = run_worlds(out, 2, ("clean", "mixed"), SIZES, plan, BASE, SELECTION)
    assert results["worlds"] == ["clean", "mixed"]
    runs = {(r["world"], r["method"]) for r in results["runs"]}
    assert runs == {("clean", m) for m in ("full", "tive", "random", "tive_lastk")} | {
        ("mixed", m) for m in ("full", "tive", "random", "tive_lastk", "clean_oracle", "task_oracle")}
    assert set(results["chance"]) == set(results["benchmarks"]) and results["items"]["pope"] == SIZES.eval
    per_world = [json.loads(Path(path).read_text())["items"] for path in results["per_world"].values()]
    assert results["items"] == {name: min(items[name] for items in per_world) for name in results["benchmarks"]}
    assert results["defects"]["clean"] == {}
    mixed = results["defects"]["mixed"]
    assert set(mixed) == {"tive", "random", "tive_lastk", "clean_oracle", "task_oracle"}
    assert mixed["tive_lastk"]["auroc"]["wrong_answer"] is not None
    # tive_lastk's features come from the last decoder layer only, in a selection run of their own.
    metas = [json.loads(p.read_text()) for p in (out / "mixed" / "selection").glob("*/features/meta.json")]
    assert sorted(m.get("request", {}).get("layers", "all") for m in metas) == ["all", "last:1"]
    assert mixed["clean_oracle"]["chosen_share"] == {"wrong_answer": 0.0, "off_format": 0.0, "near_duplicate": 0.0}
    assert mixed["task_oracle"]["task_share"] == {"colors": 0.0, "quiz": 0.0}
    assert mixed["tive"]["auroc"]["wrong_answer"] is not None and mixed["random"]["auroc"]["wrong_answer"] is None
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    text = (out / "results.md").read_text()
    assert "## World `mixed`" in text and "Known defects" in text and "Paired against random" in text
    base = json.loads((out / "base" / "bench_base.json").read_text())
    assert not (out / "clean" / "base").exists() and not (out / "mixed" / "base").exists()
    assert results["timing"]["worlds"]["mixed"]["base_model_cached"] is True
    assert base["key"]


def test_tive_proxy_selects_with_a_smaller_model_of_its_own(tmp_path: Path) -> None:
    # Issue 21, item 4: the proxy's reference model is a narrower slot model with its own prior and captions; its
    # subsets train the default model like every other method's.
    out = tmp_path / "proxy"
    plan = dataclasses.replace(PLAN, ablations=("tive_proxy",))
    results = run_bench(out, world_inputs(out, seed=1, sizes=SIZES), plan, BASE, SELECTION)
    assert {r["method"] for r in results["runs"]} == {"full", "tive", "random", "tive_proxy"}
    proxy = json.loads((out / "base_proxy" / "config.json").read_text())["text_config"]
    main = json.loads((out / "base" / "config.json").read_text())["text_config"]
    assert proxy["hidden_size"] == main["hidden_size"] // 2
    assert len(list((out / "prior").iterdir())) == 2  # each model its own language prior
    assert len(list((out / "selection").iterdir())) == 2  # and its own selection run
    sizes = {r["records"] for r in results["runs"] if r["method"] != "full"}
    assert len(sizes) == 1


def test_tive_proxy_is_refused_without_the_slot_vision(tmp_path: Path) -> None:
    out = tmp_path / "pixels"
    plan = dataclasses.replace(PLAN, ablations=("tive_proxy",))
    with pytest.raises(TiveError, match="tive_proxy: selects with a smaller bench model"):
        run_bench(out, world_inputs(out, seed=1, sizes=SIZES), plan, dataclasses.replace(BASE, vision="pixels"),
                  SELECTION)


def test_selection_runs_in_worker_processes_give_the_same_signals(bench: tuple[Path, dict], tmp_path: Path) -> None:
    # With several workers every seed's TIVE stages run in their own process; seed 0's signals equal those computed
    # in the main process (the module's bench, one worker).
    import resource

    out = tmp_path / "pool"
    plan = dataclasses.replace(PLAN, seeds=2, workers=2, ablations=())
    inputs = world_inputs(out, seed=1, sizes=SIZES)
    # Few file descriptors, as 4,000 records' tensors sent to a process would need many more than a machine allows:
    # the encoded records go to the processes as a file, not as tensors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
    try:
        results = run_bench(out, inputs, plan, BASE, SELECTION)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(results["caches"]["selection"]) == 2
    here = np.load(Path(bench[1]["caches"]["selection"][0]) / "bench_signals.npz")
    pooled = np.load(Path(results["caches"]["selection"][0]) / "bench_signals.npz")
    for name in ("values", "grad_norms", "el2n"):
        np.testing.assert_allclose(pooled[name], here[name], rtol=1e-5, atol=1e-6)
    assert results["task_values_per_seed"][0] == pytest.approx(bench[1]["task_values_per_seed"][0])
    assert results["task_values_per_seed"][1] != results["task_values_per_seed"][0]
