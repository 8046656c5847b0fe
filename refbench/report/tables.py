"""The tables a report shows, as plain data: the HTML page and every export render the same
``Table``, so a figure can never differ between the site, the CSV and the paper's LaTeX.

Metrics are shown in percent; an interval travels with its figure as separate bounds so each
format can lay it out its own way (small grey text, extra CSV columns, a LaTeX script size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from refbench.calibration import TUNED_MARK, TUNED_NOTE
from refbench.grid import GridCell
from refbench.metrics import PRECISION_AT
from refbench.scorecard import Scored
from refbench.stats import Interval, PairedResult

PRECISION_COLUMNS = [f"P@{k}" for k in PRECISION_AT]


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # what a click on the column header sorts by
    low: str | None = None  # interval bounds, formatted like ``text``
    high: str | None = None
    link: str | None = None  # relative to the site root


@dataclass
class Table:
    slug: str  # file stem of the exports, unique within a site
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def pct(value: float | None) -> Cell:
    if value is None or math.isnan(value):
        return Cell("-", None)
    return Cell(f"{100 * value:.2f}", round(100 * value, 6))


def with_interval(interval: Interval) -> Cell:
    cell = pct(interval.estimate)
    if math.isnan(interval.low):
        return cell
    return Cell(cell.text, cell.sort, f"{100 * interval.low:.2f}", f"{100 * interval.high:.2f}")


def p_value(value: float, resamples: int) -> Cell:
    floor = 1 / (resamples + 1)
    text = f"< {10 ** math.ceil(math.log10(floor)):g}" if value <= floor * 1.0001 else f"{value:.3f}"
    return Cell(text, value)


def run_link(run_key: str) -> str:
    return f"runs/{run_key}.html"


def _threshold_cell(scored: Scored) -> Cell:
    t = scored.threshold
    return Cell(t.label(), -1.0 if t.value is None else t.value)


def _threshold_notes(scored: Sequence[Scored], calibration_split: str | None) -> list[str]:
    chosen = [s.threshold for s in scored if s.threshold.value is not None]
    notes = []
    if chosen and chosen[0].criterion == "fixed":
        notes.append(f"Score-map thresholds fixed at {chosen[0].value:.2f} before seeing data; "
                     f"'mask' marks methods that output masks.")
    elif chosen:
        notes.append(f"Score-map thresholds maximise {chosen[0].criterion} on the calibration "
                     f"split '{calibration_split}' and are applied unchanged here; 'mask' marks "
                     f"methods that output masks.")
    if any(t.tuned_on_reported for t in chosen):
        notes.append(f"{TUNED_MARK} {TUNED_NOTE}: forced in the spec; these figures are optimistic.")
    return notes


def _metric_cells(scored: Scored) -> list[Cell]:
    m = scored.metrics
    return [with_interval(scored.intervals["oIoU"]), with_interval(scored.intervals["mIoU"]),
            *(pct(m[c]) for c in PRECISION_COLUMNS)]


def leaderboard(slug: str, title: str, entries: Sequence[tuple[str, Scored]],
                calibration_split: str | None, confidence: float) -> Table:
    """Seed 003's tables 1-2: a row per method, threshold, oIoU and mIoU with intervals, P@k."""
    semantic = any("semantic" in s.summary for _, s in entries)
    columns = ["Method", "Threshold", "oIoU", "mIoU", *PRECISION_COLUMNS, "n"]
    if semantic:
        columns.insert(4, "semantic mIoU")
    rows = []
    for label, s in entries:
        row = [Cell(label, label, link=run_link(s.run.record.run_key)), _threshold_cell(s),
               *_metric_cells(s), Cell(str(s.summary["n"]), s.summary["n"])]
        if semantic:
            row.insert(4, pct(s.summary.get("semantic", {}).get("mIoU")))
        rows.append(row)
    notes = [f"oIoU and mIoU in percent with {confidence:.0%} bootstrap intervals (images "
             f"resampled)."] + _threshold_notes([s for _, s in entries], calibration_split)
    return Table(slug, title, columns, rows, notes)


def breakdown_table(slug: str, title: str, field_name: str,
                    entries: Sequence[tuple[str, dict[str, dict[str, float]]]]) -> Table | None:
    """mIoU and oIoU per value of a sample field (RefShapes: attribute, relation, plain)."""
    groups = sorted({g for _, per in entries for g in per})
    if not groups:
        return None
    sizes = {g: next(per[g]["n"] for _, per in entries if g in per) for g in groups}
    columns = ["Method", *(f"{g} {metric} (n={sizes[g]})" for g in groups for metric in ("mIoU", "oIoU"))]
    rows = [[Cell(label, label), *(pct(per.get(g, {}).get(metric)) for g in groups
                                   for metric in ("mIoU", "oIoU"))] for label, per in entries]
    return Table(slug, title, columns, rows, [f"Metrics per value of the sample field "
                                              f"'{field_name}', at each method's threshold."])


def comparison_table(slug: str, title: str, pairs: Sequence[tuple[str, str, PairedResult]],
                     confidence: float) -> Table:
    """Paired comparisons on the same samples: difference, interval, p-value, wins/ties/losses."""
    columns = ["A", "B", "ΔmIoU (A−B)", "p-value", "wins", "ties", "losses", "images"]
    rows = []
    for a, b, r in pairs:
        diff = Cell(f"{100 * r.diff:+.2f}", round(100 * r.diff, 6), f"{100 * r.interval.low:+.2f}",
                    f"{100 * r.interval.high:+.2f}")
        rows.append([Cell(a, a), Cell(b, b), diff, p_value(r.p_value, r.resamples),
                     Cell(str(r.wins), r.wins), Cell(str(r.ties), r.ties),
                     Cell(str(r.losses), r.losses), Cell(str(r.clusters), r.clusters)])
    notes = [f"ΔmIoU in points with a {confidence:.0%} paired bootstrap interval over images; "
             f"two-sided p-value of a sign-flip permutation test on per-image differences; "
             f"wins/ties/losses count samples where A's IoU is higher/equal/lower."]
    return Table(slug, title, columns, rows, notes)


def ablation_table(slug: str, title: str, params: Sequence[str], cells: Sequence[GridCell],
                   calibration_split: str | None, confidence: float) -> Table:
    """Seed 003's tables 3-4: a row per grid cell with its threshold and metrics."""
    columns = [*params, "Threshold", "oIoU", "mIoU", *PRECISION_COLUMNS]
    rows = []
    for cell in cells:
        link = run_link(cell.scored.run.record.run_key)
        values = [Cell(v, _number_or_text(v), link=link) for v in cell.values.values()]
        rows.append([*values, _threshold_cell(cell.scored), *_metric_cells(cell.scored)])
    notes = [f"One run per row; oIoU and mIoU in percent with {confidence:.0%} bootstrap "
             f"intervals."] + _threshold_notes([c.scored for c in cells], calibration_split)
    return Table(slug, title, columns, rows, notes)


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
