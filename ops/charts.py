"""Charts as inline SVG drawn in Python: a report that opens with no network and runs no script.

Every text that reaches the SVG passes through `esc` (labels are tier names, verifier reasons and batch ids,
which come from configuration and job data). Each chart is an `<svg class="chart" data-chart=NAME>` with a
fixed size, so a browser lays it out before any style loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2f6fb0", "#e08a2c", "#3a9d5d", "#b04a4a", "#7a5fb0", "#5a8f9c", "#9c8a5a")
WIDTH, HEIGHT = 660, 270
TOP, RIGHT, BOTTOM, LEFT = 28, 16, 56, 70     # plot margins: legend above, category labels below, axis left
LABEL_CHARS = 16                              # a category label longer than this is cut (the tooltip has it whole)


def esc(text: object) -> str:
    """Text made safe for HTML and SVG, quotes included (it also goes into attributes)."""
    return escape(str(text), quote=True)


def percent(value: float) -> str:
    """0.123 -> "12.3%"."""
    return f"{value * 100:.1f}%"


def usd(value: float) -> str:
    """Dollars with enough digits for a cheap batch."""
    return f"${value:,.6f}" if abs(value) < 100 else f"${value:,.2f}"


def usd_tick(value: float) -> str:
    """Dollars as short as an axis label needs."""
    if value == 0 or abs(value) >= 10:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if abs(value) >= 0.1 else f"${value:.2g}"


@dataclass(frozen=True)
class Series:
    """One named row of values, one per category (None: no value there)."""

    name: str
    values: tuple[float | None, ...]
    color: str = ""
    colors: tuple[str, ...] = ()        # one per value, over `color`


def _nice_max(value: float) -> float:
    """A round axis top at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"


def _open(name: str, title: str, height: int = HEIGHT) -> list[str]:
    opening = (f'<svg class="chart" data-chart="{esc(name)}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
               f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{esc(title)}">')
    return [opening, f"<title>{esc(title)}</title>"]


def _axis(parts: list[str], top: float, fmt: Callable[[float], str], plot_h: float) -> None:
    """Horizontal grid lines with their values on the left."""
    for k in range(5):
        value = top * k / 4
        y = TOP + plot_h - plot_h * k / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(value))}</text>')


def _legend(parts: list[str], series: Sequence[Series]) -> None:
    x = LEFT
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{esc(color)}"/>')
        parts.append(f'<text class="legend" x="{x + 14}" y="17">{esc(s.name)}</text>')
        x += 24 + 7 * len(s.name)


def bar_chart(name: str, title: str, categories: Sequence[str], series: Sequence[Series],
              fmt: Callable[[float], str] = str, y_max: float | None = None,
              tick: Callable[[float], str] | None = None) -> str:
    """Grouped vertical bars: one group per category, one bar per series (`tick` formats the axis, else `fmt`)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    highest = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = y_max if y_max is not None else _nice_max(highest)
    parts = _open(name, title)
    _axis(parts, top, tick or fmt, plot_h)
    group = plot_w / max(1, len(categories))
    bar = max(2.0, min(48.0, group * 0.8 / max(1, len(series))))
    for c, category in enumerate(categories):
        start = LEFT + c * group + (group - bar * len(series)) / 2
        for i, s in enumerate(series):
            value = s.values[c]
            if value is None or value <= 0:       # nothing to draw; the tooltip of a 0-height bar is unreachable
                continue
            h = max(1.0, plot_h * min(value, top) / top)
            color = s.colors[c] if s.colors else s.color or PALETTE[i % len(PALETTE)]
            parts.append(f'<rect class="bar" x="{start + i * bar:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar - 1:.1f}" '
                         f'height="{h:.1f}" fill="{esc(color)}"><title>{esc(s.name)} / {esc(category)}: '
                         f'{esc(fmt(value))}</title></rect>')
        parts.append(f'<text class="label" x="{LEFT + c * group + group / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                     f'text-anchor="middle">{esc(_cut(category))}<title>{esc(category)}</title></text>')
    if len(series) > 1:
        _legend(parts, series)
    parts.append("</svg>")
    return "".join(parts)


def line_chart(name: str, title: str, labels: Sequence[str], series: Sequence[Series],
               band: tuple[float, float, float] | None = None, fmt: Callable[[float], str] = percent,
               y_max: float | None = None) -> str:
    """Lines over evenly spaced points; `band` = (low, baseline, high) is shaded behind them."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    highest = max([v for s in series for v in s.values if v is not None] + ([band[2]] if band else []), default=0.0)
    top = y_max if y_max is not None else min(1.0, _nice_max(highest * 1.1)) if fmt is percent else _nice_max(highest)
    parts = _open(name, title)
    _axis(parts, top, fmt, plot_h)

    def y_of(value: float) -> float:
        return TOP + plot_h - plot_h * max(0.0, min(value, top)) / top

    n = len(labels)

    def x_of(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / n if n else plot_w / 2)

    if band is not None:
        low, mid, high = band
        parts.append(f'<rect class="band" x="{LEFT}" y="{y_of(high):.1f}" width="{plot_w}" '
                     f'height="{max(1.0, y_of(low) - y_of(high)):.1f}"><title>SLO band {esc(fmt(low))} to '
                     f'{esc(fmt(high))} around baseline {esc(fmt(mid))}</title></rect>')
        parts.append(f'<line class="baseline" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y_of(mid):.1f}" '
                     f'y2="{y_of(mid):.1f}"/>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        points = [(x_of(k), y_of(v), v, k) for k, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline class="line" points="{path}" fill="none" stroke="{esc(color)}" stroke-width="2"/>')
        for x, y, v, k in points:
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{esc(color)}">'
                         f'<title>{esc(s.name)} at {esc(labels[k])}: {esc(fmt(v))}</title></circle>')
    step = max(1, math.ceil(n / 8))            # at most 8 labels under the axis
    for k in range(0, n, step):
        parts.append(f'<text class="label" x="{x_of(k):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{esc(_cut(labels[k]))}</text>')
    _legend(parts, series)
    parts.append("</svg>")
    return "".join(parts)


def meter_chart(name: str, title: str, rows: Sequence[tuple[str, float, float]]) -> str:
    """One horizontal bar per row: spent against a limit (label, spent, limit; a limit of 0 means none)."""
    row_h, left = 30, 190
    height = TOP + row_h * len(rows) + 24
    scale = max([spent / limit for _, spent, limit in rows if limit > 0] + [1.0])
    plot_w = WIDTH - left - RIGHT - 120
    parts = _open(name, title, height)
    full = plot_w / scale                    # the pixel length of 100%
    parts.append(f'<line class="limit" x1="{left + full:.1f}" x2="{left + full:.1f}" y1="{TOP - 6}" '
                 f'y2="{height - 20}"/><text class="tick" x="{left + full:.1f}" y="{TOP - 10}" '
                 f'text-anchor="middle">budget</text>')
    for r, (label, spent, limit) in enumerate(rows):
        y = TOP + r * row_h
        parts.append(f'<text class="label" x="{left - 8}" y="{y + 18}" text-anchor="end">{esc(_cut(label))}'
                     f'<title>{esc(label)}</title></text>')
        if limit > 0:
            share = spent / limit
            color = PALETTE[3] if share > 1 else PALETTE[0]
            parts.append(f'<rect class="bar" x="{left}" y="{y + 6}" width="{max(1.0, full * share):.1f}" height="16" '
                         f'fill="{color}"><title>{esc(label)}: {esc(usd(spent))} of {esc(usd(limit))}</title></rect>')
            text = f"{percent(share)} of {usd(limit)}"
        else:
            text = f"{usd(spent)}, no budget"
        parts.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{y + 18}" text-anchor="end">{esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(name: str, title: str, rows: Sequence[tuple[str, float]], fmt: Callable[[float], str] = str) -> str:
    """One horizontal bar per labelled value, longest labels readable (reject reasons)."""
    row_h, left = 26, 300
    height = 12 + row_h * len(rows) + 8
    top = max((v for _, v in rows), default=0.0) or 1.0
    plot_w = WIDTH - left - RIGHT - 70
    parts = _open(name, title, height)
    for r, (label, value) in enumerate(rows):
        y = 12 + r * row_h
        shown = label if len(label) <= 44 else label[:43] + "\u2026"
        parts.append(f'<text class="label" x="{left - 8}" y="{y + 14}" text-anchor="end">{esc(shown)}'
                     f'<title>{esc(label)}</title></text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 2}" width="{max(1.0, plot_w * value / top):.1f}" '
                     f'height="16" fill="{PALETTE[1]}"><title>{esc(label)}: {esc(fmt(value))}</title></rect>')
        parts.append(f'<text class="tick" x="{left + max(1.0, plot_w * value / top) + 6:.1f}" y="{y + 14}">'
                     f'{esc(fmt(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)
