"""Inline SVG charts: a metric against a parameter with its confidence band, as the
attribute-binding write-up ("Attribute binding enhancement improvement for diffusion model based
zero-shot image segmentation", Nanli Wu) plots its ratio alpha; and a run's threshold sweep with
the threshold that was chosen.

Hand-written SVG keeps the site self-contained (no plotting library, no script, no CDN) and
crisp at any zoom. Every piece of text is escaped: labels come from specs and data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 360
MARGIN = {"left": 64, "right": 24, "top": 28, "bottom": 56}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Point:
    x: str  # the parameter value as given
    y: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]


@dataclass(frozen=True)
class Baseline:
    """A horizontal reference line: a figure the curve is read against."""

    y: float
    label: str


@dataclass(frozen=True)
class Mark:
    """A vertical line at one of the x values (a chosen threshold, a default setting)."""

    x: str
    label: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * (1 - 1e-9):
        ticks.append(round(value, 10))
        value += step
    return ticks


def _positions(labels: list[str]) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """x positions in [0, 1] and tick marks: numeric values on a linear axis, otherwise evenly
    spaced categories."""
    try:
        values = {label: float(label) for label in labels}
    except ValueError:
        step = 1 / max(len(labels) - 1, 1)
        pos = {label: (i * step if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
        return pos, [(p, label) for label, p in pos.items()]
    ticks = nice_ticks(min(values.values()), max(values.values()))
    lo, hi = ticks[0], ticks[-1]
    pos = {label: (v - lo) / (hi - lo) for label, v in values.items()}
    return pos, [((t - lo) / (hi - lo), f"{t:g}") for t in ticks]


def line_chart(series: Sequence[Series], x_label: str, y_label: str, title: str, *,
               band_label: str | None = None, baselines: Sequence[Baseline] = (),
               marks: Sequence[Mark] = ()) -> Markup:
    """An SVG line chart with a shaded band from each point's low to high (named in the legend
    by ``band_label``), dashed ``baselines`` across, and vertical ``marks``."""
    labels = list(dict.fromkeys(p.x for s in series for p in s.points))
    xs, x_ticks = _positions(labels)
    ys = [v for s in series for p in s.points for v in (p.y, p.low, p.high)
          if v is not None and math.isfinite(v)] + [b.y for b in baselines if math.isfinite(b.y)]
    y_ticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    px = lambda x: MARGIN["left"] + xs[x] * plot_w  # noqa: E731
    py = lambda y: MARGIN["top"] + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h  # noqa: E731

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    for t in y_ticks:
        y = py(t)
        parts.append(f'<line x1="{MARGIN["left"]}" x2="{WIDTH - MARGIN["right"]}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{MARGIN["left"] - 8}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="12">{t:g}</text>')
    base = HEIGHT - MARGIN["bottom"]
    for position, text in x_ticks:
        x = MARGIN["left"] + position * plot_w
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 5}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 19}" text-anchor="middle" font-size="12">'
                     f"{escape(text)}</text>")
    parts.append(f'<line x1="{MARGIN["left"]}" x2="{WIDTH - MARGIN["right"]}" y1="{base}" '
                 f'y2="{base}" stroke="#333"/>')
    parts.append(f'<text x="{MARGIN["left"] + plot_w / 2:.1f}" y="{HEIGHT - 12}" '
                 f'text-anchor="middle" font-size="13">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(16 {MARGIN["top"] + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle" font-size="13">{escape(y_label)}</text>')

    for mark in marks:
        if mark.x not in xs:
            continue
        x = px(mark.x)
        parts.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN["top"]}" y2="{base}" '
                     f'stroke="#555" stroke-width="1.5"/>')
        parts.append(f'<text x="{x + 4:.1f}" y="{MARGIN["top"] + plot_h - 6:.1f}" font-size="12" '
                     f'fill="#333">{escape(mark.label)}</text>')
    for baseline in baselines:
        y = py(baseline.y)
        parts.append(f'<line class="baseline" x1="{MARGIN["left"]}" x2="{WIDTH - MARGIN["right"]}" '
                     f'y1="{y:.1f}" y2="{y:.1f}" stroke="#444" stroke-dasharray="6 4"/>')
    legend: list[tuple[str, str]] = []  # (swatch svg, text)
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = sorted(s.points, key=lambda p: xs[p.x])
        banded = [p for p in points if p.low is not None and p.high is not None]
        if banded:
            upper = [f"{px(p.x):.1f},{py(p.high):.1f}" for p in banded]  # type: ignore[arg-type]
            lower = [f"{px(p.x):.1f},{py(p.low):.1f}" for p in reversed(banded)]  # type: ignore[arg-type]
            parts.append(f'<polygon class="band" points="{" ".join(upper + lower)}" '
                         f'fill="{colour}" fill-opacity="0.18" stroke="none"/>')
        line = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in points)
        parts.append(f'<polyline class="line" points="{line}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        for p in points:
            band = f" [{p.low:.2f}, {p.high:.2f}]" if p.low is not None and p.high is not None else ""
            tip = f"{s.name}: {x_label}={p.x}: {p.y:.2f}{band}"
            parts.append(f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="3.5" fill="{colour}">'
                         f"<title>{escape(tip)}</title></circle>")
        if len(series) > 1 or band_label or baselines:
            legend.append((f'<rect width="12" height="3" y="4.5" fill="{colour}"/>', s.name))
    if band_label:
        legend.append(('<rect width="12" height="12" fill="#888" fill-opacity="0.3"/>', band_label))
    for baseline in baselines:
        legend.append(('<line x1="0" x2="12" y1="6" y2="6" stroke="#444" stroke-dasharray="3 2"/>',
                       f"{baseline.label}: {baseline.y:.2f}"))
    # the legend goes under the axis, one entry a line, so it never hides a curve or a baseline
    for i, (swatch, text) in enumerate(legend):
        y = HEIGHT + 16 * i
        parts.append(f'<g transform="translate({MARGIN["left"]} {y})">{swatch}</g>')
        parts.append(f'<text class="legend-text" x="{MARGIN["left"] + 18}" y="{y + 10}" '
                     f'font-size="12">{escape(text)}</text>')
    height = HEIGHT + (16 * len(legend) + 8 if legend else 0)
    parts[0] = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
                f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">')
    parts[2] = f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>'
    parts.append("</svg>")
    return Markup("\n".join(parts))
