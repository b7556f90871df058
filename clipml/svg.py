"""Small charts as inline SVG text (bars, lines), drawn by hand so that a run's report needs
neither matplotlib nor anything online. Every mark carries its value (`data-*`, a tooltip), and
line points are written in data units under one transform, so the file states the numbers
it draws."""

from __future__ import annotations

import math
from html import escape
from typing import List, Optional, Sequence, Tuple

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
REFERENCE = "#444444"
FONT = 'font-family="sans-serif" font-size="11"'


def _number(value: float) -> str:
    return f"{value:.6g}"


def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [low, high] with about `count` ticks."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, last + 1)]
    return ticks


def horizontal_bars(rows: Sequence[Tuple[str, Optional[float], Optional[float]]], value_name: str,
                    reference_name: str, maximum: float = 100.0, label_width: int = 150,
                    bar_width: int = 420, row_height: int = 16) -> str:
    """One bar per row (label, value, reference): the value as a bar (`class="bar"`,
    `data-label`, `data-value`), the reference as a dark tick; None: "n/a", no bar."""
    top, bottom = 22, 26
    height = top + row_height * len(rows) + bottom
    width = label_width + bar_width + 60
    scale = bar_width / maximum
    parts = [f'<svg width="{width}" height="{height}" {FONT}>',
             _legend([(value_name, COLOURS[0], "bar"), (reference_name, REFERENCE, "tick")], label_width, 12)]
    for tick in nice_ticks(0, maximum, 6):
        x = label_width + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{tick:g}</text>')
    for i, (label, value, reference) in enumerate(rows):
        y = top + i * row_height
        name = escape(label)
        parts.append(f'<text x="{label_width - 6}" y="{y + row_height - 4}" text-anchor="end">{name}</text>')
        if value is None:
            parts.append(f'<text x="{label_width + 4}" y="{y + row_height - 4}" fill="#888">n/a</text>')
        else:
            parts.append(f'<rect class="bar" data-label="{name}" data-value="{_number(value)}" x="{label_width}" '
                         f'y="{y + 2}" width="{value * scale:.2f}" height="{row_height - 4}" fill="{COLOURS[0]}">'
                         f'<title>{name}: {value:.2f}</title></rect>')
            end = max(value, reference if reference is not None else value)  # past the tick, not over it
            parts.append(f'<text x="{label_width + end * scale + 5:.1f}" y="{y + row_height - 4}">{value:.1f}</text>')
        if reference is not None:
            x = label_width + reference * scale
            parts.append(f'<line class="reference" data-label="{name}" data-value="{_number(reference)}" '
                         f'x1="{x:.2f}" y1="{y + 1}" x2="{x:.2f}" y2="{y + row_height - 1}" stroke="{REFERENCE}" '
                         f'stroke-width="2"><title>{name}, {escape(reference_name)}: {reference:.2f}</title></line>')
    parts.append("</svg>")
    return "\n".join(parts)


def grouped_bars(groups: Sequence[Tuple[str, Sequence[Optional[float]]]], series: Sequence[str],
                 title: str, maximum: float = 100.0, group_width: int = 110, height: int = 220) -> str:
    """Vertical bars: per group (x label, one value per series), one bar per series
    (`class="bar"`, `data-group`, `data-series`, `data-value`); None: no bar."""
    left, top, bottom = 40, 34, 40
    plot = height - top - bottom
    width = left + group_width * len(groups) + 20
    bar = (group_width - 20) / max(1, len(series))
    parts = [f'<svg width="{width}" height="{height}" {FONT}>',
             f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>',
             _legend([(name, COLOURS[i % len(COLOURS)], "bar") for i, name in enumerate(series)], left, 28)]
    for tick in nice_ticks(0, maximum, 5):
        y = top + plot - tick / maximum * plot
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for g, (label, values) in enumerate(groups):
        x0 = left + g * group_width + 10
        for s, value in enumerate(values):
            if value is None:
                continue
            h = value / maximum * plot
            parts.append(f'<rect class="bar" data-group="{escape(label)}" data-series="{escape(series[s])}" '
                         f'data-value="{_number(value)}" x="{x0 + s * bar:.1f}" y="{top + plot - h:.2f}" '
                         f'width="{bar - 2:.1f}" height="{h:.2f}" fill="{COLOURS[s % len(COLOURS)]}">'
                         f'<title>{escape(label)}, {escape(series[s])}: {value:.2f}</title></rect>')
        parts.append(f'<text x="{x0 + (group_width - 20) / 2:.1f}" y="{top + plot + 16}" '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_plot(lines: Sequence[Tuple[str, Sequence[float], Sequence[float]]], title: str, x_label: str,
              y_label: str, x_range: Optional[Tuple[float, float]] = None,
              y_range: Optional[Tuple[float, float]] = None, width: int = 300, height: int = 220,
              legend: bool = True) -> str:
    """Lines through (x, y) points. Each `<polyline class="line" data-label=...>` holds its
    points in data units; one transform maps them onto the axes (strokes keep their width)."""
    left, right, top, bottom = 46, 12, 34 if legend else 22, 36
    xs = [x for _, line_x, _ in lines for x in line_x]
    ys = [y for _, _, line_y in lines for y in line_y]
    x_ticks = nice_ticks(*(x_range or (min(xs, default=0.0), max(xs, default=1.0))))
    y_ticks = nice_ticks(*(y_range or (min(ys, default=0.0), max(ys, default=1.0))))
    x0, x1 = x_range or (x_ticks[0], x_ticks[-1])
    y0, y1 = y_range or (y_ticks[0], y_ticks[-1])
    w, h = width - left - right, height - top - bottom
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    parts = [f'<svg width="{width}" height="{height}" {FONT}>',
             f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>']
    if legend:
        parts.append(_legend([(name, COLOURS[i % len(COLOURS)], "line") for i, (name, _, _) in enumerate(lines)],
                             left, 28))
    for tick in x_ticks:
        if x0 - 1e-9 <= tick <= x1 + 1e-9:
            x = left + (tick - x0) * sx
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{top + h + 13}" text-anchor="middle">{tick:g}</text>')
    for tick in y_ticks:
        if y0 - 1e-9 <= tick <= y1 + 1e-9:
            y = top + h - (tick - y0) * sy
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(11,{top + h / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f'{escape(y_label)}</text>')
    parts.append(f'<g transform="translate({left - x0 * sx:.4f},{top + h + y0 * sy:.4f}) '
                 f'scale({sx:.6g},{-sy:.6g})">')
    for i, (name, line_x, line_y) in enumerate(lines):
        points = " ".join(f"{_number(x)},{_number(y)}" for x, y in zip(line_x, line_y))
        parts.append(f'<polyline class="line" data-label="{escape(name)}" points="{points}" fill="none" '
                     f'stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5" vector-effect="non-scaling-stroke"/>')
    parts.append("</g></svg>")
    return "\n".join(parts)


def _legend(entries: Sequence[Tuple[str, str, str]], x: float, y: float) -> str:
    """Swatches with names in one row at (x, y): kind "bar" (a square), "line" or "tick"."""
    parts = []
    for name, colour, kind in entries:
        if kind == "bar":
            parts.append(f'<rect x="{x:.0f}" y="{y - 8}" width="10" height="9" fill="{colour}"/>')
        elif kind == "line":
            parts.append(f'<line x1="{x:.0f}" y1="{y - 4}" x2="{x + 10:.0f}" y2="{y - 4}" stroke="{colour}" '
                         f'stroke-width="2"/>')
        else:
            parts.append(f'<line x1="{x + 5:.0f}" y1="{y - 9}" x2="{x + 5:.0f}" y2="{y + 1}" stroke="{colour}" '
                         f'stroke-width="2"/>')
        parts.append(f'<text x="{x + 14:.0f}" y="{y}">{escape(name)}</text>')
        x += 24 + 6.5 * len(name)
    return "\n".join(parts)
