"""The report says when the full-data run is at chance instead of printing percentages of noise."""

from __future__ import annotations

from tive.bench.report import chance_lines, chance_summary, summary_rows, summary_table


def _results(full: dict[str, float], subset: dict[str, float], chance: dict[str, float] | None) -> dict:
    names = list(full)

    def run(method: str, budget: float, scores: dict[str, float]) -> dict:
        return {"method": method, "budget": budget, "seed": 0, "scores": scores,
                "average": sum(scores.values()) / len(scores)}

    results = {"benchmarks": names, "runs": [run("full", 1.0, full), run("tive", 0.15, subset)]}
    if chance is not None:
        results["chance"] = chance
    return results


CHANCE = {"pope": 50.0, "mmbench": 25.0, "refcoco": 0.0}


def test_benchmark_at_chance_is_flagged_and_percent_kept_when_the_average_is_not() -> None:
    results = _results({"pope": 55.0, "mmbench": 70.0, "refcoco": 40.0},
                       {"pope": 52.0, "mmbench": 60.0, "refcoco": 30.0}, CHANCE)
    summary = chance_summary(results)
    assert summary["benchmarks"] == ["pope"]  # 55 is within 10 points of 50
    assert not summary["average_at_chance"]
    table = summary_table(results)
    assert "| pope * |" in table and "| mmbench |" in table
    assert "| chance | - | - | 50.0 | 25.0 | 0.0 | 25.0 | - |" in table
    tive = next(r for r in summary_rows(results) if r["method"] == "tive")
    assert tive["percent_of_full"] == 100 * (142 / 3) / (165 / 3)
    assert "n/m" not in table
    lines = chance_lines(results)
    assert len(lines) == 1 and "pope" in lines[0] and "mmbench" not in lines[0]


def test_full_average_at_chance_makes_percent_of_full_not_meaningful() -> None:
    results = _results({"pope": 50.0, "mmbench": 30.0, "refcoco": 2.0},
                       {"pope": 48.0, "mmbench": 35.0, "refcoco": 0.0}, CHANCE)
    summary = chance_summary(results)
    assert summary["benchmarks"] == ["pope", "mmbench", "refcoco"]
    assert summary["average_at_chance"]
    assert all(row["percent_of_full"] is None for row in summary_rows(results))
    table = summary_table(results)
    body = [line for line in table.splitlines() if line.startswith(("| full", "| tive"))]
    assert len(body) == 2 and all(line.endswith("| n/m |") for line in body)
    assert any("not meaningful" in line for line in chance_lines(results))


def test_below_chance_counts_as_at_chance_and_old_results_still_print() -> None:
    results = _results({"pope": 20.0, "mmbench": 90.0, "refcoco": 90.0},
                       {"pope": 20.0, "mmbench": 90.0, "refcoco": 90.0}, CHANCE)
    assert chance_summary(results)["benchmarks"] == ["pope"]
    old = _results({"a": 10.0}, {"a": 5.0}, None)  # a results.json from before chance levels
    assert chance_summary(old) is None and chance_lines(old) == []
    assert "| tive | 15% | 0 | 5.0 | 5.0 | 50.0 |" in summary_table(old)  # no steps recorded then


def test_each_recipe_gets_its_table_with_the_full_data_run_in_both() -> None:
    results = _results({"pope": 80.0, "mmbench": 70.0, "refcoco": 40.0},
                       {"pope": 75.0, "mmbench": 60.0, "refcoco": 30.0}, CHANCE)
    results["runs"][1].update(recipe="steps", steps=300)
    results["runs"][0]["steps"] = 300
    results["runs"].append({"method": "tive", "budget": 0.15, "seed": 0, "recipe": "epochs", "steps": 45,
                            "scores": {"pope": 60.0, "mmbench": 40.0, "refcoco": 5.0}, "average": 35.0})
    results["plan"] = {"recipes": ["steps", "epochs"]}
    table = summary_table(results)
    steps_part, epochs_part = table.split("**Equal epochs")
    assert "**Equal steps" in steps_part and "| tive | 15% | 300 | 75.0 | 60.0 | 30.0 | 55.0 |" in steps_part
    assert "| tive | 15% | 45 | 60.0 | 40.0 | 5.0 | 35.0 |" in epochs_part
    assert steps_part.count("| full | 100% | 300 |") == epochs_part.count("| full | 100% | 300 |") == 1
    epochs_tive = next(r for r in summary_rows(results, "epochs") if r["method"] == "tive")
    assert epochs_tive["percent_of_full"] == 100 * 35.0 / (190 / 3)


def test_loglik_table_beside_accuracy() -> None:
    results = _results({"pope": 55.0, "mmbench": 70.0}, {"pope": 52.0, "mmbench": 60.0}, None)
    assert "log-likelihood" not in summary_table(results)  # older results without log-likelihoods
    results["runs"][0]["logliks"] = {"pope": -0.25, "mmbench": -1.5}
    results["runs"][1]["logliks"] = {"pope": -0.75, "mmbench": -2.125}
    table = summary_table(results)
    assert "log-likelihood of the reference answer" in table
    assert "| full | 100% | -0.25 | -1.50 |" in table and "| tive | 15% | -0.75 | -2.12 |" in table
