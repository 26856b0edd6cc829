"""Small inline SVG charts for the HTML report: no plotting library, no script, a few kilobytes each.

Every chart is drawn from aggregates (shares, histogram counts, a down-sampled curve), never one mark per record,
so a report's size does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

INPUT_COLOUR = "#9aa5b1"
SUBSET_COLOUR = "#d9480f"
ALL_COLOUR = "#c5ccd3"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def number(value: float) -> str:
    """A short label for an axis or a bar: 3 significant digits."""
    return f"{value:.3g}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" {FONT}>'
            f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def share_bars(labels: Sequence[str], input_shares: Sequence[float], subset_shares: Sequence[float],
               title: str = "share of the input and of the subset, per task") -> str:
    """Horizontal bars, two per task: its share of the input records and of the subset (fractions, 0..1)."""
    label_width, bar_width, row, pad = 160, 420, 30, 24
    height = pad + row * len(labels) + 8
    top = max([*input_shares, *subset_shares, 1e-12])
    body = [
        f'<rect x="{label_width}" y="4" width="10" height="10" fill="{INPUT_COLOUR}"/>'
        f'<text x="{label_width + 14}" y="13">input</text>'
        f'<rect x="{label_width + 70}" y="4" width="10" height="10" fill="{SUBSET_COLOUR}"/>'
        f'<text x="{label_width + 84}" y="13">subset</text>'
    ]
    for i, (label, a, b) in enumerate(zip(labels, input_shares, subset_shares)):
        y = pad + i * row
        body.append(f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{escape(_clip(label, 24))}</text>')
        for k, (share, colour) in enumerate(((a, INPUT_COLOUR), (b, SUBSET_COLOUR))):
            width = bar_width * share / top
            yy = y + 2 + 12 * k
            body.append(f'<rect x="{label_width}" y="{yy}" width="{width:.1f}" height="11" fill="{colour}"/>'
                        f'<text x="{label_width + width + 4:.1f}" y="{yy + 9}">{100 * share:.1f}%</text>')
    return _svg(label_width + bar_width + 60, height, title, body)


def histogram(edges: Sequence[float], all_counts: Sequence[int], chosen_counts: Sequence[int], x_label: str,
              title: str) -> str:
    """A histogram of a task's records (grey) with the chosen ones (colour) drawn over it, bin by bin."""
    width, height, left, bottom, top_pad = 320, 130, 34, 28, 14
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    peak = max([*all_counts, 1])
    n = len(all_counts)
    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#555"/>',
            f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end">{peak}</text>',
            f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">0</text>']
    for i in range(n):
        x = left + plot_w * i / n
        w = max(plot_w / n - 1, 0.5)
        for count, colour in ((all_counts[i], ALL_COLOUR), (chosen_counts[i], SUBSET_COLOUR)):
            if count:
                h = plot_h * count / peak
                body.append(f'<rect x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{w:.1f}" height="{h:.1f}" '
                            f'fill="{colour}"/>')
    lo, hi = edges[0], edges[-1]
    body += [f'<text x="{left}" y="{height - 14}">{number(lo)}</text>',
             f'<text x="{left + plot_w}" y="{height - 14}" text-anchor="end">{number(hi)}</text>',
             f'<text x="{left + plot_w / 2}" y="{height - 3}" text-anchor="middle">{escape(x_label)}</text>']
    return _svg(width, height, title, body)


def line_chart(xs: Sequence[float], ys: Sequence[float], x_label: str, y_label: str, title: str) -> str:
    """A line through (xs, ys), e.g. the warm-up loss per step (down-sample long curves first)."""
    width, height, left, bottom, top_pad = 520, 160, 44, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    points = " ".join(f"{left + plot_w * (x - x0) / x_span:.1f},{top_pad + plot_h * (1 - (y - y0) / y_span):.1f}"
                      for x, y in zip(xs, ys))
    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#555"/>',
            f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#555"/>',
            f'<polyline points="{points}" fill="none" stroke="{SUBSET_COLOUR}" stroke-width="1.5"/>',
            f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end">{number(y1)}</text>',
            f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">{number(y0)}</text>',
            f'<text x="{left}" y="{height - 16}">{number(x0)}</text>',
            f'<text x="{left + plot_w}" y="{height - 16}" text-anchor="end">{number(x1)}</text>',
            f'<text x="{left + plot_w / 2}" y="{height - 3}" text-anchor="middle">{escape(x_label)}</text>',
            f'<text x="12" y="{top_pad + plot_h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top_pad + plot_h / 2})">{escape(y_label)}</text>']
    return _svg(width, height, title, body)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
