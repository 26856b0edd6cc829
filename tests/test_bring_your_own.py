"""`tive score` and `tive select` on features computed by another tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tive.cli import main
from tive.scoring import instance_values_pairwise


def _write_features(run: Path, features: np.ndarray, norms: np.ndarray) -> None:
    (run / "features").mkdir(parents=True, exist_ok=True)
    np.save(run / "features" / "features.npy", features.astype(np.float32))
    np.save(run / "features" / "norms.npy", norms)


def test_score_and_select_on_a_bare_manifest_and_features(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    tasks = ["a"] * 30 + ["b"] * 10 + ["c"] * 20
    rows = [{"index": i, "id": f"r{i}", "task": t, "status": "ok", "grad_norm": float(1 + (t == "b"))}
            for i, t in enumerate(tasks)]
    rows.insert(5, {"index": 5, "id": "gone", "task": "a", "status": "skipped: missing image x.png", "grad_norm": None})
    for i, row in enumerate(rows):
        row["index"] = i
    run = tmp_path / "byo"
    run.mkdir()
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = rng.normal(size=(60, 16))
    _write_features(run, features, np.array([r["grad_norm"] for r in rows if r["status"] == "ok"]))

    assert main(["score", str(run)]) == 0
    assert main(["select", str(run), "--budget", "12", "--choose", "top"]) == 0
    out = capsys.readouterr().out
    assert "no subset file was written" in out
    scored = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in scored if r["status"] == "ok"]
    np.testing.assert_allclose([r["value"] for r in ok], instance_values_pairwise(features.astype(np.float32), tasks),
                               atol=1e-6)
    budgets = {t: info["budget"] for t, info in json.loads((run / "tasks.json").read_text()).items()}
    # values a: 1, b: 2, c: 1 over a total of 4 units -> shares 3, 6, 3 of 12
    assert budgets == {"a": 3, "b": 6, "c": 3}
    assert scored[5]["selected"] == 0 and sum(r["selected"] for r in scored) == 12


def test_prepare_then_own_features_gives_a_subset(small_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    images = str(small_data.parent / "images")
    assert main(["prepare", str(small_data), "--out", str(run), "--images", images, "--task-field", "dataset"]) == 0
    n = len(json.loads(small_data.read_text()))
    rng = np.random.default_rng(1)
    _write_features(run, rng.normal(size=(n, 8)), rng.uniform(1, 2, size=n))  # no grad_norm in the manifest yet
    assert main(["score", str(run)]) == 0
    assert main(["select", str(run), "--budget", "0.25"]) == 0
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["grad_norm"] for r in rows], np.load(run / "features" / "norms.npy"))
    subset = json.loads((run / "subset.json").read_text())
    assert len(subset) == round(0.25 * n)


def test_features_with_the_wrong_number_of_rows_are_refused(tmp_path: Path, capsys):
    run = tmp_path / "byo"
    run.mkdir()
    rows = [{"index": i, "id": i, "task": "a", "status": "ok", "grad_norm": 1.0} for i in range(4)]
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_features(run, np.ones((3, 2)), np.ones(3))
    assert main(["score", str(run)]) == 2
    assert "one row per ok record" in capsys.readouterr().err
