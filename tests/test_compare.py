"""`tive compare`: lmms-eval 0.7.3 result files -> the paper's table (scores, % of full, 0–100 average)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lmms_eval_results import paper_scores, write_lmms_eval_results
from tive.cli import main
from tive.compare import BENCHMARKS, run_compare


def test_compare_reads_lmms_evals_files_and_reports_percent_of_full_and_the_average(tmp_path: Path) -> None:
    full = write_lmms_eval_results(tmp_path / "eval" / "full", "/m/train/full", paper_scores())
    write_lmms_eval_results(tmp_path / "eval" / "subset", "/m/train/subset", paper_scores(-0.01))
    write_lmms_eval_results(tmp_path / "eval" / "random", "/m/train/random", paper_scores(-0.03))
    assert full.parent.name == "train__full" and full.name == "20261207_010203_results.json"  # lmms-eval's layout
    out = tmp_path / "table.md"
    table = run_compare([str(tmp_path / "eval" / n) for n in ("full", "subset", "random")], out=str(out))
    assert table["labels"] == ["full", "subset", "random"] and table["full"] == "full"
    rows = {row["benchmark"]: row for row in table["rows"]}
    assert [row["benchmark"] for row in table["rows"]] == [b.name for b in BENCHMARKS]
    assert rows["VQAv2"]["scores"] == {"full": 0.785, "subset": 0.775, "random": 0.755}
    assert rows["VQAv2"]["percent_of_full"]["subset"] == pytest.approx(100 * 0.775 / 0.785)
    assert rows["MME"]["scores"]["full"] == pytest.approx(1510.7 + 355.7)  # perception + cognition, of 2,800
    assert rows["POPE"]["scores"]["full"] == 0.859  # F1, not accuracy
    assert rows["SEED-Bench"]["scores"]["full"] == 0.661  # the image part
    averaged = ["VQAv2", "GQA", "VizWiz", "ScienceQA-IMG", "TextVQA", "POPE", "MMBench", "MMBench-CN", "SEED-Bench"]
    assert table["average"]["benchmarks"] == averaged
    expected = (78.5 + 62 + 50 + 69.5 + 58.2 + 85.9 + 64.3 + 58.3 + 66.1) / 9
    assert table["average"]["scores"]["full"] == pytest.approx(expected)
    assert table["average"]["scores"]["subset"] == pytest.approx(expected - 1)
    assert table["average"]["percent_of_full"]["random"] == pytest.approx(100 * (expected - 3) / expected)
    assert set(table["left_out_of_average"]) == {"MME", "LLaVA-Bench", "MM-Vet"}
    text = out.read_text()
    assert "| VQAv2 (vqav2_val: exact_match) | 0.7850 | 0.7750 (98.7%) | 0.7550 (96.2%) |" in text
    assert f"| **average, 0–100 (9 benchmarks)** | {expected:.1f} | {expected - 1:.1f} (" in text
    assert "MME (a 2,800-point score" in text and "MM-Vet (scored by a GPT judge)" in text
    assert json.loads(out.with_suffix(".json").read_text())["average"]["benchmarks"] == averaged


def test_compare_labels_files_and_leaves_out_what_a_result_lacks(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    scores = paper_scores()
    partial = {task: value for task, value in scores.items() if task not in ("gqa", "mmvet")}
    partial["ok_vqa_val2014"] = {"exact_match": 0.5}
    a = write_lmms_eval_results(tmp_path / "a", "/m/a", scores)
    b = write_lmms_eval_results(tmp_path / "b", "/m/b", partial)
    assert main(["compare", str(a), str(b), "--label", "all", "--label", "tive", "--full", "all",
                 "--out", str(tmp_path / "c.md")]) == 0
    table = json.loads((tmp_path / "c.json").read_text())
    assert table["labels"] == ["all", "tive"]
    assert "GQA" not in table["average"]["benchmarks"] and table["left_out_of_average"]["GQA"] == "missing from tive"
    assert table["other_tasks"] == {"ok_vqa_val2014: exact_match,none": {"all": None, "tive": 0.5}}
    assert "| 0.6200 | – |" in (tmp_path / "c.md").read_text()
    # labels default to the file name's date part for files
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "d.md")]) == 2
    assert "labels 20261207_010203 name several results" in capsys.readouterr().err


def test_compare_refuses_what_is_not_an_lmms_eval_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "x_results.json"
    bad.write_text(json.dumps({"vqav2": 0.7}))
    assert main(["compare", str(bad), "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: no 'results' object" in err and "Traceback" not in err
    broken = write_lmms_eval_results(tmp_path / "e", "/m/e", {"gqa": {"exact_match": 0.6}})
    data = json.loads(broken.read_text())
    data["results"]["gqa"]["exact_match,none"] = "N/A"
    broken.write_text(json.dumps(data))
    assert main(["compare", str(broken), "--out", str(tmp_path / "t.md")]) == 2
    assert "results['gqa']['exact_match,none'] is 'N/A', not a number" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "e"), str(tmp_path / "e"), "--label", "one",
                 "--out", str(tmp_path / "t.md")]) == 2
    assert "--label given 1 time(s) for 2 results" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "t.md")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_compare_takes_the_newest_results_file_of_a_folder(tmp_path: Path) -> None:
    write_lmms_eval_results(tmp_path / "run", "/m/x", {"gqa": {"exact_match": 0.5}}, date="20261201_000000")
    write_lmms_eval_results(tmp_path / "run", "/m/x", {"gqa": {"exact_match": 0.6}}, date="20261202_000000")
    table = run_compare([str(tmp_path / "run")], out=str(tmp_path / "t.md"))
    assert table["rows"][0]["scores"] == {"run": 0.6}


@pytest.mark.parametrize("command", ["baseline", "export", "compare"])
def test_the_check_it_commands_have_working_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tive " + command in capsys.readouterr().out
