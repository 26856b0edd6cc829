"""End to end, as README's "Check it on your model" gives it: `tive run` -> `tive baseline` -> `tive export` ->
(LLaMA-Factory's own loader and two training steps, where its venv exists) -> `tive compare` on result files in
lmms-eval's format.

Nothing is written by hand: every path comes from what tive wrote (the export's YAMLs and lmms-eval script); the
evaluation results are written in lmms-eval 0.7.3's layout for the models and output paths the script names.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.lmms_eval_results import paper_scores, write_lmms_eval_results
from tive.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run from the command line with the tiny model, a random and a stratified baseline, both exports."""
    from tive.demo_data import make_demo_dataset

    data = make_demo_dataset(tmp_path_factory.mktemp("check_data"), n_records=100, seed=7)
    run = tmp_path_factory.mktemp("check") / "run"
    assert main(["run", str(data), "--images", str(data.parent / "images"), "--task-field", "dataset",
                 "--model", "tiny", "--proj-dim", "256", "--budget", "0.2", "--out", str(run)]) == 0
    assert main(["baseline", str(run), "--method", "random"]) == 0
    assert main(["baseline", str(run), "--method", "stratified", "--seed", "1"]) == 0
    assert main(["export", str(run), "--for", "llava"]) == 0
    assert main(["export", str(run), "--for", "llama-factory"]) == 0
    return run


def test_run_baseline_export_compare(exported: Path) -> None:
    run = exported
    subset = json.loads((run / "subset.json").read_text())
    for name in ("random", "stratified-seed1"):
        assert len(json.loads((run / "baselines" / f"{name}.json").read_text())) == len(subset) == 20
    info = json.loads((run / "export" / "llama-factory" / "dataset_info.json").read_text())
    assert set(info) == {"tive_full", "tive_subset", "tive_random", "tive_stratified-seed1"}
    for key, entry in info.items():
        config = yaml.safe_load((run / "export" / "llama-factory" / f"train_{key[5:]}.yaml").read_text())
        assert config["dataset"] == key and Path(entry["file_name"]).is_file()
    # Evaluate: each command of the exported lmms-eval script, as lmms-eval would write its results.
    commands = [shlex.split(line) for line in (run / "export" / "lmms_eval.sh").read_text().splitlines()
                if line.startswith("python -m lmms_eval")]
    assert len(commands) == 4  # full, subset, random, stratified-seed1
    outputs = []
    for number, command in enumerate(commands):
        pretrained = command[command.index("--model_args") + 1].removeprefix("pretrained=")
        output = Path(command[command.index("--output_path") + 1])
        tasks = command[command.index("--tasks") + 1].split(",")
        scores = {task: value for task, value in paper_scores(-0.01 * number).items() if task in tasks}
        assert set(scores) == set(tasks)
        write_lmms_eval_results(output, pretrained, scores)
        outputs.append(output)
    compare = re.search(r"^# then: (tive compare .*)$", (run / "export" / "lmms_eval.sh").read_text(), re.M)
    out = run / "comparison.md"
    assert main([*shlex.split(compare.group(1))[1:], "--out", str(out)]) == 0  # the command the script gives
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["labels"] == ["full", "subset", "random", "stratified-seed1"] and table["full"] == "full"
    assert len(table["average"]["benchmarks"]) == 9
    assert table["average"]["percent_of_full"]["subset"] < 100


def _llamafactory_python() -> str | None:
    """An interpreter with llamafactory: $TIVE_LLAMAFACTORY_PYTHON, or the venv benchmarks/llamafactory_venv.sh
    makes at the repository root (.venv-llamafactory); None when neither exists."""
    import os

    given = os.environ.get("TIVE_LLAMAFACTORY_PYTHON")
    if given:
        return given
    default = Path(__file__).parents[1] / ".venv-llamafactory" / "bin" / "python"
    return str(default) if default.is_file() else None


def test_llama_factory_loads_the_exported_datasets_and_trains(exported: Path) -> None:
    """LLaMA-Factory's own loader on every exported entry, and two training steps on the CPU, run by
    benchmarks/check_llamafactory.py in LLaMA-Factory's own venv (it is not a test dependency)."""
    import subprocess

    python = _llamafactory_python()
    if python is None:
        pytest.skip("no LLaMA-Factory venv (make one with benchmarks/llamafactory_venv.sh, or set "
                    "TIVE_LLAMAFACTORY_PYTHON): llamafactory 0.9.5 needs dependencies tive's venv does not have")
    script = Path(__file__).parents[1] / "benchmarks" / "check_llamafactory.py"
    result = subprocess.run([python, str(script), str(exported)], capture_output=True, text=True, timeout=1200)
    report = json.loads((exported / "llamafactory_check.json").read_text())
    assert set(report["datasets"]) == {"full", "subset", "random", "stratified-seed1"}, result.stdout[-2000:]
    for name, outcome in report["datasets"].items():
        assert "load_error" not in outcome and "train_error" not in outcome, (name, outcome)
        assert outcome["loaded"]["rows"] == outcome["records"] == (100 if name == "full" else 20)  # every record
        assert outcome["loaded"]["rows_with_images"] == outcome["records_with_images"]
        assert outcome["train"]["global_step"] == 2 and len(outcome["train"]["losses"]) == 2
    assert report["ok"] and result.returncode == 0
