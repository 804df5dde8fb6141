"""Charts as inline SVG text, drawn in Python: horizontal bars and lines over time.

Each function returns one ``<svg>`` element to put in an HTML page: no script, no stylesheet, no
font or image to fetch. Every label is escaped here, so callers pass plain text (user data
included). Numbers are formatted with the ``fmt`` function the caller gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12"'
TEXT = "#222"
GRID = "#ddd"


@dataclass(frozen=True)
class Bar:
    """One bar: its label, its value, and an optional note printed after the value."""

    label: str
    value: float
    note: str = ""
    colour: str | None = None


@dataclass(frozen=True)
class Series:
    """One line: its name, its colour and its (x, y) points in x order."""

    name: str
    colour: str
    points: Sequence[tuple[float, float]]


def money(value: float) -> str:
    """Dollars with as many decimals as a small amount needs: "$123.40", "$1.234", "$0.00420"."""
    magnitude = abs(value)
    if magnitude >= 100 or magnitude == 0:
        return f"${value:,.2f}"
    if magnitude >= 1:
        return f"${value:,.3f}"
    decimals = min(8, max(4, 2 - math.floor(math.log10(magnitude))))
    return f"${value:.{decimals}f}"


def hbars(bars: Sequence[Bar], *, title: str, fmt: Callable[[float], str] = money, width: int = 900,
          label_width: int = 200) -> str:
    """Horizontal bars, one row per :class:`Bar`, scaled to the largest value (negative values
    draw no bar; their number is still printed)."""
    row, top = 26, 8
    height = top * 2 + row * max(1, len(bars))
    value_room = 240
    span = width - label_width - value_room
    largest = max((b.value for b in bars), default=0.0)
    parts = [_open(width, height, title)]
    if not bars:
        parts.append(f'<text x="{width // 2}" y="{height // 2 + 4}" text-anchor="middle" fill="{TEXT}">'
                     "nothing to show</text>")
    for i, bar in enumerate(bars):
        y = top + i * row
        length = span * bar.value / largest if largest > 0 and bar.value > 0 else 0.0
        colour = bar.colour or PALETTE[i % len(PALETTE)]
        name = escape(bar.label)
        parts.append(f'<g><title>{name}: {escape(fmt(bar.value))}</title>'
                     f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end" fill="{TEXT}">'
                     f"{escape(_clip(bar.label, 30))}</text>"
                     f'<rect x="{label_width}" y="{y + 4}" width="{length:.1f}" height="{row - 8}" '
                     f'fill="{colour}" rx="2"/>'
                     f'<text x="{label_width + length + 6:.1f}" y="{y + 17}" fill="{TEXT}">'
                     f"{escape(fmt(bar.value))}{(' ' + escape(bar.note)) if bar.note else ''}</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def lines(series: Sequence[Series], *, title: str, x_fmt: Callable[[float], str],
          y_fmt: Callable[[float], str] = money, width: int = 900, height: int = 320) -> str:
    """Lines on shared axes, with a few labelled ticks on each and a legend above."""
    left, right, top, bottom = 80, 50, 30, 36
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y1 = max([*ys, 0.0]) or 1.0
    x1 = x1 if x1 > x0 else x0 + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + plot_w * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + plot_h * (1 - y / y1)

    parts = [_open(width, height, title)]
    for k in range(5):
        y = y1 * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="{GRID}"/>'
                     f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" fill="{TEXT}">'
                     f"{escape(y_fmt(y))}</text>")
        x = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 18}" text-anchor="middle" fill="{TEXT}">'
                     f"{escape(x_fmt(x))}</text>")
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="{TEXT}"/>'
                 f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{TEXT}"/>')
    for i, s in enumerate(series):
        if s.points:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2.5"/>')
        lx = left + 10 + i * 260
        parts.append(f'<rect x="{lx}" y="8" width="14" height="14" fill="{s.colour}"/>'
                     f'<text x="{lx + 20}" y="19" fill="{TEXT}">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def thin(points: Sequence[tuple[float, float]], most: int = 400) -> list[tuple[float, float]]:
    """At most ``most`` of ``points``, evenly spaced, always keeping the last: a line over
    thousands of events stays a small file and looks the same."""
    if len(points) <= most:
        return list(points)
    step = math.ceil(len(points) / most)
    kept = list(points[::step])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(title)}" {FONT}><title>{escape(title)}</title>')


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "\u2026"
