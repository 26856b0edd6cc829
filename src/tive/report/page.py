"""`RUN/report.html`: what a selection chose and why, in one self-contained file.

Written by `tive select` and rebuilt by `tive report RUN` from the run directory alone. Everything is inline (CSS,
SVG charts, JPEG thumbnails as data URLs; no script, no network fetch), and its size does not grow with the number
of records: charts are histograms and shares, and each task shows a fixed number of examples (the highest- and
lowest-valued records and a spread of the chosen ones). Beyond `DETAILED_TASKS` tasks, the largest ones get charts
and examples and the others their table row.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from tive.badrecords import reason_kind
from tive.errors import TiveError
from tive.io import read_json, write_text
from tive.report import charts
from tive.rundir import (
    FEATURES_DIR,
    FEATURES_SKIP,
    PREPARE_FILE,
    SELECT_FILE,
    TASKS_FILE,
    TRAIN_LOG,
    WARMUP_DIR,
    WARMUP_MARKER,
    read_manifest,
)

log = logging.getLogger("tive")

REPORT_FILE = "report.html"
DETAILED_TASKS = 40
EXAMPLES_PER_KIND = 3
BINS = 30
THUMBNAIL_PIXELS = 160
TEXT_CHARS = 280
MAX_CURVE_POINTS = 400
MAX_SKIP_ROWS = 60


def write_report(run_dir: Path | str, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write `run_dir/report.html` from the run's files; `rows` (the manifest, when the caller holds it) saves
    reading it again. Returns the report's path.

    Raises:
        TiveError: the run has no selection yet.
    """
    run_dir = Path(run_dir)
    if not (run_dir / TASKS_FILE).is_file():
        raise TiveError(f"{run_dir}: no selection to report on; run `tive select {run_dir}` first")
    tasks = read_json(run_dir / TASKS_FILE)
    rows = read_manifest(run_dir) if rows is None else rows
    if any(row.get("selected") is None for row in rows if row["status"] == "ok"):
        raise TiveError(f"{run_dir}: manifest.jsonl has no selection; run `tive select {run_dir}` first")
    page = _Page(run_dir, tasks, rows).render()
    path = run_dir / REPORT_FILE
    write_text(path, page)
    return path


class _Page:
    """The report's data, gathered once, and its HTML sections."""

    def __init__(self, run_dir: Path, tasks: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self.tasks = tasks
        self.rows = rows
        self.prepare = _optional_json(run_dir / PREPARE_FILE)
        self.warmup = _optional_json(run_dir / WARMUP_DIR / WARMUP_MARKER)
        self.features = _optional_json(run_dir / FEATURES_DIR / "meta.json")
        self.selection = _optional_json(run_dir / SELECT_FILE)
        self.config = _optional_yaml(run_dir / "config.yaml")
        ok = [row for row in rows if row["status"] == "ok"]
        self.ok_task = np.array([row["task"] for row in ok], dtype=object)
        self.ok_index = np.array([row["index"] for row in ok], dtype=np.int64)
        self.value = np.array([_number(row.get("value")) for row in ok], dtype=np.float64)
        self.norm = np.array([_number(row.get("grad_norm")) for row in ok], dtype=np.float64)
        self.chosen = np.array([row.get("selected") or 0 for row in ok], dtype=np.int64)
        self.total_records = sum(info["records"] for info in tasks.values())
        self.total_selected = sum(info.get("selected") or 0 for info in tasks.values())
        by_size = sorted(tasks, key=lambda name: (-tasks[name]["records"], name))
        self.detailed = sorted(by_size[:DETAILED_TASKS])

    # ------------------------------------------------------------------------------------------------- page
    def render(self) -> str:
        examples, why_none = self._examples()
        from tive.baseline import baselines_section

        sections = [self._summary(), self._table(), self._skipped(), self._shares(), baselines_section(self.run_dir),
                    self._per_task(examples, why_none), self._warmup_curve(), self._provenance()]
        title = f"tive report: {self.run_dir.name}"
        return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
                + "".join(section for section in sections if section) + "</main></body></html>\n")

    def _summary(self) -> str:
        share = 100 * self.total_selected / self.total_records if self.total_records else 0.0
        effective = (self.selection or {}).get("effective", {})
        rule = []
        if effective:
            rule.append(f"budget {effective.get('budget')}")
            choose = effective.get("choose")
            rule.append(f"choose={choose}" + (f", temperature {effective.get('temperature'):g}"
                                              if choose == "sample" and effective.get("temperature") is not None
                                              else ""))
            if effective.get("oversample"):
                rule.append("oversampling")
            if effective.get("excluded"):
                rule.append("excluded: " + ", ".join(effective["excluded"]))
            rule.append(f"seed {effective.get('seed')}")
        subset = next((p.name for p in sorted(self.run_dir.glob("subset*"))), None)
        return (
            f"<header><h1>What tive selected, and why</h1><p class=\"lead\" id=\"summary\"><b>{self.total_selected:,}"
            f"</b> of <b>{self.total_records:,}</b> records ({share:.1f}%) selected from <b>{len(self.tasks)}</b> "
            f"task(s)" + (f" — {escape('; '.join(rule))}" if rule else "") + ".</p>"
            + (f"<p>The subset is <code>{escape(str(self.run_dir / subset))}</code>: the chosen records, unchanged, in "
               "the input's format." if subset else
               "<p>No subset file: this run directory has no prepared input (features brought by the user); "
               "<code>manifest.jsonl</code> marks the chosen records.")
            + " Per record: <code>manifest.jsonl</code>; per task: <code>tasks.json</code>.</p></header>"
            "<section id=\"how\"><h2>How to read this</h2><p>tive trained a small LoRA adapter on a balanced sample "
            "of the data (the <i>reference model</i>) and then took, for every record, the gradient of the reference "
            "model's loss on that record's answers. A <b>task's value</b> is the mean length (norm) of its records' "
            "gradients: a task the reference model still finds hard has large gradients and receives a larger share "
            "of the budget. Within a task, a <b>record's value</b> is the mean cosine similarity of its gradient with "
            "those of the other records of the task: high for records typical of what the task teaches, low for "
            "outliers. The selection draws each task's budget favouring high-valued records. The charts below show, "
            "per task, how the chosen records (orange) sit among all records (grey).</p></section>"
        )

    def _table(self) -> str:
        head = ("<tr><th>task</th><th>records</th><th>ok</th><th>skipped</th><th>value</th><th>budget</th>"
                "<th>selected</th><th>share of input</th><th>share of subset</th></tr>")
        body = []
        for name, info in self.tasks.items():
            skipped = sum((info.get("skipped") or {}).values())
            value = info.get("value")
            selected = info.get("selected") or 0
            cells = [
                ("records", f"{info['records']:,}"),
                ("ok", f"{info.get('ok', 0):,}"),
                ("skipped", f"{skipped:,}"),
                ("value", "–" if value is None else f"{value:.4g}"),
                ("budget", "–" if info.get("budget") is None else f"{info['budget']:,}"),
                ("selected", f"{selected:,}"),
                ("input_share", _percent(info["records"], self.total_records)),
                ("subset_share", _percent(selected, self.total_selected)),
            ]
            mark = " <span class=\"tag\">excluded</span>" if info.get("excluded") else ""
            body.append(f"<tr data-task=\"{escape(name)}\"><th scope=\"row\">{escape(name)}{mark}</th>"
                        + "".join(f"<td data-key=\"{key}\">{text}</td>" for key, text in cells) + "</tr>")
        totals = (f"<tr><th scope=\"row\">total</th><td>{self.total_records:,}</td>"
                  f"<td>{sum(i.get('ok', 0) for i in self.tasks.values()):,}</td>"
                  f"<td>{sum(sum((i.get('skipped') or {}).values()) for i in self.tasks.values()):,}</td><td></td>"
                  f"<td>{sum(i.get('budget') or 0 for i in self.tasks.values()):,}</td><td>{self.total_selected:,}</td>"
                  "<td>100%</td><td>100%</td></tr>")
        return ("<section id=\"tasks\"><h2>Tasks</h2><p>Value: the task's mean gradient norm. Budget: its share of the "
                "subset by value. Skipped: records that could not be used (below).</p>"
                f"<table id=\"task-table\"><thead>{head}</thead><tbody>{''.join(body)}</tbody>"
                f"<tfoot>{totals}</tfoot></table></section>")

    def _skipped(self) -> str:
        counts: Counter[tuple[str, str, str]] = Counter()
        first: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in self.rows:
            status = row["status"]
            if status == "ok":
                continue
            reason = status.removeprefix("skipped: ")
            stage = "prepare"
            if status.startswith(FEATURES_SKIP):
                stage, reason = "features", status[len(FEATURES_SKIP):]
            key = (row["task"], stage, reason_kind(reason))
            counts[key] += 1
            first.setdefault(key, row)
        for index, reason in ((self.warmup or {}).get("skipped") or {}).items():
            if int(index) < len(self.rows):
                row = self.rows[int(index)]
                key = (row["task"], "warm-up (features kept)", reason_kind(reason))
                counts[key] += 1
                first.setdefault(key, row)
        if not counts:
            return ("<section id=\"skipped\"><h2>Records left out</h2><p>None: every record could be used.</p>"
                    "</section>")
        lines = []
        for key, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_SKIP_ROWS]:
            row = first[key]
            example = f"record {row['index']}" + (f" (id {row['id']})" if row.get("id") is not None else "")
            lines.append(f"<tr><td>{escape(key[0])}</td><td>{escape(key[1])}</td><td>{escape(key[2])}</td>"
                         f"<td>{count:,}</td><td>{escape(example)}: {escape(_clip(row['status'], 160))}</td></tr>")
        more = (f"<p>{len(counts) - MAX_SKIP_ROWS} more (task, stage, reason) groups: see the manifest.</p>"
                if len(counts) > MAX_SKIP_ROWS else "")
        return ("<section id=\"skipped\"><h2>Records left out</h2><p>A record that cannot be used (a missing or broken "
                "image, a conversation the chat template refuses, no answer within the maximum length) is skipped "
                "and named in <code>manifest.jsonl</code>; records the warm-up skipped still get features.</p>"
                "<table><thead><tr><th>task</th><th>stage</th><th>reason</th><th>records</th><th>first</th></tr>"
                f"</thead><tbody>{''.join(lines)}</tbody></table>{more}</section>")

    def _shares(self) -> str:
        names = list(self.tasks)
        chart = charts.share_bars(
            names,
            [self.tasks[n]["records"] / self.total_records if self.total_records else 0.0 for n in names],
            [(self.tasks[n].get("selected") or 0) / self.total_selected if self.total_selected else 0.0
             for n in names])
        return ("<section id=\"shares\"><h2>Task shares: input and subset</h2><p>A task whose subset share exceeds its "
                f"input share was judged harder than average by the reference model.</p>{chart}</section>")

    def _per_task(self, examples: dict[int, dict[str, Any]], why_none: str | None) -> str:
        if not len(self.value):
            return ""
        parts = []
        for name in self.detailed:
            mask = self.ok_task == name
            if not mask.any():
                continue
            chosen = mask & (self.chosen > 0)
            value_edges, norm_edges = _edges(self.value[mask]), _edges(self.norm[mask])
            value_chart = charts.histogram(value_edges, _counts(self.value[mask], value_edges),
                                           _counts(self.value[chosen], value_edges), "instance value",
                                           f"{name}: instance values, chosen records in colour")
            norm_chart = charts.histogram(norm_edges, _counts(self.norm[mask], norm_edges),
                                          _counts(self.norm[chosen], norm_edges), "gradient norm",
                                          f"{name}: gradient norms, chosen records in colour")
            info = self.tasks.get(name, {})
            parts.append(
                f"<article class=\"task\" id=\"task-{escape(name)}\"><h3>{escape(name)}</h3><p class=\"facts\">"
                f"{int(mask.sum()):,} records with features, {int((self.chosen[mask] > 0).sum()):,} chosen; task value "
                f"{_format(info.get('value'))}; mean instance value {self.value[mask].mean():.3f} (chosen "
                f"{_mean(self.value[chosen])})</p><div class=\"charts\">{value_chart}{norm_chart}</div>"
                + self._examples_html(name, mask, examples, why_none) + "</article>")
        rest = len(self.tasks) - len(self.detailed)
        note = (f"<p>{rest} smaller task(s) are in the table only (charts and examples for the {DETAILED_TASKS} "
                "largest).</p>" if rest > 0 else "")
        return ("<section id=\"per-task\"><h2>Per task: values, norms and examples</h2><p>Histograms of every record "
                "with features (grey) and of the chosen ones (orange), each on its task's own range. Examples: the "
                "records with the highest and the lowest value, and chosen records spread over their value range."
                f"</p>{note}{''.join(parts)}</section>")

    def _example_picks(self, mask: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Positions (into the ok arrays) of a task's examples: highest, lowest, and a spread of the chosen."""
        positions = np.flatnonzero(mask)
        order = positions[np.argsort(-self.value[positions], kind="stable")]
        k = EXAMPLES_PER_KIND
        highest = order[:k]
        lowest = order[::-1][: max(0, min(k, len(order) - k))]  # never a record already shown as highest
        chosen = order[self.chosen[order] > 0]
        shown = set(highest.tolist()) | set(lowest.tolist())
        unshown = np.array([p for p in chosen.tolist() if p not in shown], dtype=np.int64)
        if len(unshown) >= k:
            chosen = unshown
        if len(chosen):
            spread = chosen[np.unique(np.linspace(0, len(chosen) - 1, min(k, len(chosen))).round().astype(int))]
        else:
            spread = chosen
        return [("highest value", highest), ("lowest value", lowest), ("chosen", spread)]

    def _examples(self) -> tuple[dict[int, dict[str, Any]], str | None]:
        """The example records (index → question, answer, thumbnail), or why there are none."""
        wanted: set[int] = set()
        for name in self.detailed:
            for _, picks in self._example_picks(self.ok_task == name):
                wanted.update(int(self.ok_index[p]) for p in picks)
        if not wanted:
            return {}, None
        if self.prepare is None:
            return {}, ("this run directory has no prepare.json (features brought by the user), so the records "
                        "themselves are not available")
        from tive.data.formats import dataset_sha256, read_records

        data = Path(self.prepare["data"])
        if not data.exists():
            return {}, f"the input {data} is gone"
        if dataset_sha256(data) != self.prepare.get("data_sha256"):
            return {}, f"the input {data} changed since `tive prepare`"
        log.info("report: reading %d example records from %s", len(wanted), data)
        try:
            records = read_records(data, self.prepare["format"], sorted(wanted))
        except TiveError as err:
            return {}, f"the input could not be read: {err}"
        return {index: _example(record, data, self.prepare.get("images")) for index, record in records.items()}, None

    def _examples_html(self, name: str, mask: np.ndarray, examples: dict[int, dict[str, Any]],
                       why_none: str | None) -> str:
        if why_none:
            return f"<p class=\"none\">No examples: {escape(why_none)}.</p>"
        blocks = []
        for kind, picks in self._example_picks(mask):
            cards = []
            for position in picks:
                index = int(self.ok_index[position])
                example = examples.get(index)
                if example is None:
                    continue
                row = self.rows[index]
                chosen = int(self.chosen[position])
                meta = (f"value {self.value[position]:.3f} · " + (f"chosen ×{chosen}" if chosen > 1 else
                                                                   "chosen" if chosen else "not chosen")
                        + f" · record {index}" + (f", id {row['id']}" if row.get("id") is not None else ""))
                image = (f"<img src=\"{example['thumbnail']}\" alt=\"image of record {index}\">"
                         if example["thumbnail"] else
                         f"<div class=\"noimg\">{escape(example['image_note'])}</div>")
                cards.append(f"<figure class=\"card{' picked' if chosen else ''}\">{image}<figcaption>"
                             f"<div class=\"meta\">{escape(meta)}</div>"
                             f"<p><b>Q</b> {escape(example['question'])}</p>"
                             f"<p><b>A</b> {escape(example['answer'])}</p></figcaption></figure>")
            if cards:
                blocks.append(f"<h4>{escape(kind)}</h4><div class=\"cards\">{''.join(cards)}</div>")
        return "".join(blocks)

    def _warmup_curve(self) -> str:
        path = self.run_dir / WARMUP_DIR / TRAIN_LOG
        if not path.is_file():
            return ""
        steps, losses = [], []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    entry = json.loads(line)
                    steps.append(entry["step"])
                    losses.append(entry["loss"])
        if len(steps) < 2:
            return ""
        xs, ys = _downsample(np.array(steps, dtype=np.float64), np.array(losses, dtype=np.float64))
        chart = charts.line_chart(xs, ys, "optimiser step", "loss", "warm-up loss per step")
        return ("<section id=\"warmup\"><h2>Warm-up</h2><p>The reference model's training loss (mean answer-token "
                f"cross-entropy) over {len(steps):,} steps.</p>{chart}</section>")

    def _provenance(self) -> str:
        groups: list[tuple[str, list[tuple[str, Any]]]] = []
        prepare = self.prepare or {}
        options = prepare.get("options", {})
        groups.append(("Input", [
            ("file", prepare.get("data")), ("format", prepare.get("format")), ("SHA-256", prepare.get("data_sha256")),
            ("records", prepare.get("records")), ("image root", prepare.get("images")),
            ("tasks from", options.get("task_field") and f"field {options['task_field']!r}"
             or options.get("task_rules") and f"rules {options['task_rules']}" or "one task"),
        ] if prepare else [("input", "no prepare.json: features brought by the user")]))
        warm = self.warmup or {}
        settings = warm.get("settings", {})
        groups.append(("Reference model (warm-up)", [
            ("model", settings.get("model")),
            ("subset is for", ((self.config or {}).get("warmup") or {}).get("target_model")
             and f"{self.config['warmup']['target_model']} (--target-model; the reference above is its proxy)"),
            ("model fingerprint", warm.get("model_fingerprint")),
            ("adapter SHA-256", warm.get("adapter_sha256")),
            ("LoRA", settings and f"rank {settings.get('lora_rank')}, alpha {settings.get('lora_alpha')}, on "
                                  f"{', '.join(settings.get('lora_targets') or [])} in {warm.get('lora_scope')}"),
            ("training", settings and f"{len(warm.get('warmup_indices') or [])} records, {warm.get('steps')} steps, "
                                      f"lr {settings.get('learning_rate')}, {settings.get('epochs')} epoch(s), "
                                      f"{warm.get('batch')}"),
            ("seed", settings.get("seed")), ("dtype", settings.get("dtype")),
            ("device", warm and f"{warm.get('device')} x {warm.get('world')}"),
        ] if warm else [("warm-up", "not recorded in this run directory")]))
        meta = self.features or {}
        request = meta.get("request", {})
        projector = meta.get("projector_description") or {}
        groups.append(("Gradient features", [
            ("projection", projector and ", ".join(f"{k} {v}" for k, v in projector.items())),
            ("gradient", meta and f"{meta.get('grad_dim'):,} LoRA numbers per record -> {meta.get('proj_dim')} dims, "
                                  f"{request.get('grad_mode')} gradients, loss: {request.get('loss')}"),
            ("layers", meta and (f"LoRA matrices of the last {request['layers'].split(':')[1]} decoder layers only "
                                 f"(--layers {request['layers']})" if request.get("layers") else "every LoRA matrix")),
            ("encoding", meta.get("encoding") and ", ".join(f"{k} {v}" for k, v in meta["encoding"].items())),
            ("store", meta and f"{meta.get('records'):,} rows, {request.get('feature_dtype')}, "
                               f"{len(meta.get('chunks') or [])} chunk(s), {meta.get('shards')} shard(s)"),
            ("adapter SHA-256", request.get("adapter_sha256")),
        ] if meta else [("features", "no meta.json: features brought by the user")]))
        selection = (self.selection or {}).get("options", {})
        groups.append(("Selection", [(key.replace("_", " "), value) for key, value in selection.items()]))
        versions = (self.config or {}).get("versions") or {}
        groups.append(("Packages", list(versions.items())))
        html = []
        for title, items in groups:
            rows = "".join(f"<tr><th>{escape(str(key))}</th><td>{escape(_format(value))}</td></tr>"
                           for key, value in items if value not in (None, "", {}, []))
            if rows:
                html.append(f"<h3>{escape(title)}</h3><table class=\"kv\">{rows}</table>")
        return ("<section id=\"provenance\"><h2>Settings and provenance</h2><p>Everything that made this selection; "
                "<code>tive run --config " + escape(str(self.run_dir / "config.yaml")) + " --out NEW</code> reruns it."
                f"</p>{''.join(html)}</section>")


def _example(record: Any, data: Path, image_root: str | None) -> dict[str, Any]:
    """A record's first question and answer (shortened) and a thumbnail of its first image (or why none)."""
    question = next((turn.text() for turn in record.turns if turn.role == "user"), "")
    answer = next((turn.text() for turn in record.turns if turn.role == "assistant"), "")
    thumbnail, note = None, "no image (text only)"
    if record.images:
        thumbnail, note = _thumbnail(record, data, image_root)
        if len(record.images) > 1 and thumbnail:
            question = f"[{len(record.images)} images; the first shown] {question}"
    return {"question": _clip(question.strip(), TEXT_CHARS), "answer": _clip(answer.strip(), TEXT_CHARS),
            "thumbnail": thumbnail, "image_note": note}


def _thumbnail(record: Any, data: Path, image_root: str | None) -> tuple[str | None, str]:
    """The first image as a small JPEG data URL, or (None, why not)."""
    from PIL import Image

    from tive.data.formats import Dataset
    from tive.data.images import open_image, resolve_image_paths

    try:
        resolve_image_paths(Dataset(path=data, format="", records=[record], raw_lines=None), image_root)
        with Image.open(open_image(record, 0)) as image:
            image.draft("RGB", (THUMBNAIL_PIXELS * 2, THUMBNAIL_PIXELS * 2))
            picture = image.convert("RGB")
        picture.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=80)
    except Exception as err:  # a missing, moved or broken image must not stop the report
        return None, f"image unavailable: {_clip(str(err), 120)}"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


def _edges(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, BINS + 1)


def _counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return np.histogram(values[np.isfinite(values)], bins=edges)[0].astype(int).tolist()


def _downsample(xs: np.ndarray, ys: np.ndarray) -> tuple[list[float], list[float]]:
    """At most MAX_CURVE_POINTS points: the mean of each run of consecutive points."""
    if len(xs) <= MAX_CURVE_POINTS:
        return xs.tolist(), ys.tolist()
    groups = np.array_split(np.arange(len(xs)), MAX_CURVE_POINTS)
    return [float(xs[g].mean()) for g in groups], [float(ys[g].mean()) for g in groups]


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _mean(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" if len(values) else "–"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "–" if value is None else str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _optional_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


_CSS = """
body{margin:0;background:#f6f7f9;color:#1f2328;font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 8px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}h4{font-size:13px;margin:10px 0 4px;color:#57606a;text-transform:uppercase}
.lead{font-size:16px}code{background:#eaeef2;padding:1px 4px;border-radius:4px;font-size:12px;word-break:break-all}
table{border-collapse:collapse;background:#fff;margin:6px 0}th,td{padding:4px 10px;border-bottom:1px solid #e5e8eb;
text-align:right}th:first-child,td:first-child{text-align:left}thead th{background:#eef1f4}tfoot td,tfoot th{font-weight:600}
table.kv th{text-align:left;color:#57606a;font-weight:500;width:190px}table.kv td{text-align:left;word-break:break-all}
.tag{font-size:11px;background:#fff3bf;border-radius:4px;padding:0 4px;margin-left:4px}
.task{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:4px 16px 12px;margin:14px 0}
.facts{color:#57606a;margin:0 0 6px}.charts{display:flex;flex-wrap:wrap;gap:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
.card{margin:0;border:1px solid #e5e8eb;border-radius:6px;padding:8px;background:#fafbfc}
.card.picked{border-color:#d9480f}.card img{display:block;max-width:100%;max-height:160px;margin:0 auto 6px}
.card p{margin:2px 0;font-size:12px;overflow-wrap:anywhere}.meta{font-size:11px;color:#57606a}
.noimg{font-size:11px;color:#57606a;text-align:center;padding:20px 4px;background:#eef1f4;border-radius:4px}
.none{color:#57606a;font-style:italic}
"""
