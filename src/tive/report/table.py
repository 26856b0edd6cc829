"""Human-readable summaries of a run."""

from __future__ import annotations

from typing import Any


def task_table(tasks: dict[str, dict[str, Any]]) -> str:
    """A fixed-width per-task table: records, ok, value, budget, selected, share of the subset."""
    columns = ("task", "records", "ok", "value", "budget", "selected", "share")
    total_selected = sum((info.get("selected") or 0) for info in tasks.values())
    rows = []
    for name, info in tasks.items():
        selected = info.get("selected")
        share = f"{100 * selected / total_selected:.1f}%" if selected is not None and total_selected else "-"
        value = info.get("value")
        rows.append(
            (
                name + (" (excluded)" if info.get("excluded") else ""),
                str(info["records"]),
                str(info.get("ok", "-")),
                f"{value:.4g}" if value is not None else "-",
                "-" if info.get("budget") is None else str(info["budget"]),
                "-" if selected is None else str(selected),
                share,
            )
        )
    totals = (
        "total",
        str(sum(info["records"] for info in tasks.values())),
        str(sum(info.get("ok", 0) for info in tasks.values())),
        "",
        str(sum(info.get("budget") or 0 for info in tasks.values())),
        str(total_selected),
        "",
    )
    widths = [max(len(str(row[i])) for row in (columns, *rows, totals)) for i in range(len(columns))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in rows), rule, line(totals)])
