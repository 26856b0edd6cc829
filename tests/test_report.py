"""RUN/report.html: self-contained, true to tasks.json, bounded in size, and sound in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from tive.cli import main
from tive.report import page as report_page


class _Parsed(HTMLParser):
    """What the tests look at: every URL-bearing attribute, scripts, the task table's cells, cards and sections."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0
        self.table: dict[str, dict[str, str]] = {}
        self.ids: set[str] = set()
        self.images = 0
        self._row: str | None = None
        self._cell: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href", "srcset", "poster") and value]
        self.scripts += tag == "script"
        self.images += tag == "img"
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "tr" and "data-task" in attributes:
            self._row = attributes["data-task"]
            self.table[self._row] = {}
        if tag == "td" and self._row and "data-key" in attributes:
            self._cell, self._text = attributes["data-key"], ""

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell:
            self.table[self._row][self._cell] = self._text.strip()
            self._cell = None
        if tag == "tr":
            self._row = None


def parse(path: Path) -> _Parsed:
    parsed = _Parsed()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def check_table_equals_tasks_json(table: dict[str, dict[str, str]], tasks: dict[str, dict]) -> None:
    """The report's task table shows tasks.json's numbers, task by task."""
    assert sorted(table) == sorted(tasks)
    total = sum(info["records"] for info in tasks.values())
    total_selected = sum(info["selected"] for info in tasks.values())
    for name, info in tasks.items():
        cells = {key: text.replace(",", "") for key, text in table[name].items()}
        assert int(cells["records"]) == info["records"] and int(cells["ok"]) == info["ok"]
        assert int(cells["skipped"]) == sum(info["skipped"].values())
        assert int(cells["budget"]) == info["budget"] and int(cells["selected"]) == info["selected"]
        assert float(cells["value"]) == pytest.approx(info["value"], rel=1e-3)
        assert cells["input_share"] == f"{100 * info['records'] / total:.1f}%"
        assert cells["subset_share"] == f"{100 * info['selected'] / total_selected:.1f}%"


def test_select_writes_a_self_contained_report_true_to_tasks_json(small_run: Path):
    report = small_run / "report.html"
    parsed = parse(report)
    # Nothing is fetched: every image is a data URL, links stay in the page, no script at all.
    assert parsed.urls and all(url.startswith(("data:", "#")) for url in parsed.urls)
    assert parsed.scripts == 0
    tasks = json.loads((small_run / "tasks.json").read_text())
    check_table_equals_tasks_json(parsed.table, tasks)
    assert {"summary", "how", "task-table", "shares", "per-task", "warmup", "provenance"} <= parsed.ids
    assert {f"task-{name}" for name in tasks} <= parsed.ids
    # Examples with thumbnails: at most 3 highest, 3 lowest and 3 chosen per task.
    assert len(tasks) * 3 <= parsed.images <= len(tasks) * 9
    text = report.read_text(encoding="utf-8")
    warmup = json.loads((small_run / "warmup" / "warmup.json").read_text())
    versions = yaml.safe_load((small_run / "config.yaml").read_text())["versions"]
    assert warmup["adapter_sha256"] in text and f"<th>torch</th><td>{versions['torch']}</td>" in text
    assert "selected from <b>" in text and "None: every record could be used." in text


def _byo_run(run: Path, n: int, n_tasks: int, seed: int = 0) -> None:
    """A bring-your-own run: manifest + random features for `n` records over `n_tasks` tasks, scored and selected."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i % n_tasks:03d}" for i in range(n)]
    run.mkdir(parents=True)
    with open(run / "manifest.jsonl", "w") as handle:
        for i, task in enumerate(tasks):
            handle.write(json.dumps({"index": i, "id": f"r{i}", "task": task, "status": "ok", "grad_norm": None}) + "\n")
    (run / "features").mkdir()
    np.save(run / "features" / "features.npy", rng.normal(size=(n, 8)).astype(np.float16))
    np.save(run / "features" / "norms.npy", rng.uniform(1, 2, size=n))
    assert main(["score", str(run)]) == 0
    assert main(["select", str(run), "--budget", "0.1"]) == 0


def test_report_size_does_not_grow_with_the_records_and_says_why_no_examples(tmp_path: Path):
    n_tasks = report_page.DETAILED_TASKS + 10
    _byo_run(tmp_path / "small", 20_000, n_tasks)
    _byo_run(tmp_path / "large", 60_000, n_tasks)
    small, large = (tmp_path / name / "report.html" for name in ("small", "large"))
    # Three times the records: the same charts (a histogram's bars are bounded by its bins; only the tails fill in).
    assert large.stat().st_size < 1.15 * small.stat().st_size
    text = large.read_text(encoding="utf-8")
    bars_bound = report_page.DETAILED_TASKS * 2 * 2 * report_page.BINS + 2 * n_tasks + 10
    assert text.count("<rect") <= bars_bound
    assert "No examples: this run directory has no prepare.json" in text
    assert "10 smaller task(s) are in the table only" in text
    parsed = parse(large)
    assert len([i for i in parsed.ids if i.startswith("task-") and i != "task-table"]) == report_page.DETAILED_TASKS
    check_table_equals_tasks_json(parsed.table, json.loads((tmp_path / "large" / "tasks.json").read_text()))


def test_report_names_skipped_records_and_survives_a_missing_image(small_data: Path, tmp_path: Path, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(small_data.parent, data_dir)
    data = data_dir / small_data.name
    records = json.loads(data.read_text())
    uses = {}
    for record in records:
        uses[record.get("image")] = uses.get(record.get("image"), 0) + 1
    gone = next(i for i, r in enumerate(records) if r.get("image") and uses[r["image"]] == 1)
    (data_dir / "images" / records[gone]["image"]).unlink()
    run = tmp_path / "run"
    assert main(["prepare", str(data), "--out", str(run), "--images", str(data_dir / "images"),
                 "--task-field", "dataset"]) == 0
    n_ok = len(records) - 1
    rng = np.random.default_rng(2)
    (run / "features").mkdir()
    np.save(run / "features" / "features.npy", rng.normal(size=(n_ok, 8)))
    np.save(run / "features" / "norms.npy", rng.uniform(1, 2, size=n_ok))
    assert main(["score", str(run)]) == 0
    assert main(["select", str(run), "--budget", "0.2"]) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "Records left out" in text and f"record {gone} (id {records[gone]['id']})" in text
    assert "missing image" in text and parse(run / "report.html").images > 0
    # An example's image removed after the selection: the report is rebuilt and says so, it does not fail.
    shown = [int(i) for i in re.findall(r'alt="image of record (\d+)"', text)]
    (data_dir / "images" / records[shown[0]]["image"]).unlink()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert "report: " in capsys.readouterr().out
    assert "image unavailable" in (run / "report.html").read_text(encoding="utf-8")


def test_tive_report_before_select_is_refused(small_data: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(small_data), "--out", str(run), "--images", str(small_data.parent / "images"),
                 "--task-field", "dataset"]) == 0
    assert main(["report", str(run)]) == 2
    assert f"run `tive select {run}` first" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# Flags for a sandboxed, offline machine: no background connections (they are refused here, many at a time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def test_report_in_a_real_browser(small_run: Path, tmp_path: Path):
    """Headless Chromium loads the report with no console error and no network request, draws a page that is not
    blank, and shows the task table of tasks.json. TIVE_REPORT_SCREENSHOT=PATH keeps the top of the page there."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extras)")
    from PIL import Image

    report = small_run / "report.html"
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            rows = page.eval_on_selector_all(
                "#task-table tbody tr",
                "rows => rows.map(r => [r.dataset.task, Object.fromEntries("
                "Array.from(r.querySelectorAll('td')).map(td => [td.dataset.key, td.innerText]))])")
            broken = page.eval_on_selector_all("img", "images => images.filter(i => !(i.complete && i.naturalWidth > 0))"
                                                      ".map(i => i.alt)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith("data:")] == [report.as_uri()]
    assert broken == []
    check_table_equals_tasks_json(dict(rows), json.loads((small_run / "tasks.json").read_text()))
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 2000 and pixels.std() > 20  # a long page with content, not a blank one
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50
    if os.environ.get("TIVE_REPORT_SCREENSHOT"):  # the README's picture: the top of the page
        with Image.open(shot) as image:
            top = image.convert("RGB").crop((0, 0, image.width, min(image.height, 1900)))
        top.quantize(colors=128).save(os.environ["TIVE_REPORT_SCREENSHOT"], optimize=True)
