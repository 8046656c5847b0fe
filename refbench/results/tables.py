"""The tables results are shown in, as plain data: the console, the HTML page and every export
render the same ``Table``, so a figure can never differ between the terminal, the site, the CSV
and the paper's LaTeX.

Metrics are shown in percent, one column per entry of ``metrics.METRICS``; an interval travels
with its figure as separate bounds so each format can lay it out its own way (small grey text,
extra CSV columns, a LaTeX script size, brackets in text).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from refbench.reported import Reported, curve_text
from refbench.results.calibration import TUNED_MARK, TUNED_NOTE
from refbench.results.metrics import METRICS, SEMANTIC_MIOU
from refbench.results.scored import Scored
from refbench.results.stats import Interval, PairedResult


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # what a click on the column header sorts by
    low: str | None = None  # interval bounds, formatted like ``text``
    high: str | None = None
    link: str | None = None  # relative to the site root
    best: bool = False  # the column's best measured figure: pages show it bold


@dataclass
class Table:
    slug: str  # file stem of the exports, unique within a site
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    """A file stem (exports, page anchors) from a title-like text."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


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


METRIC_COLUMNS = [m.name for m in METRICS]
INTERVALLED = [m.name for m in METRICS if m.interval]


def _metric_cells(scored: Scored) -> list[Cell]:
    return [with_interval(scored.intervals[m.name]) if m.name in scored.intervals
            else pct(scored.metrics[m.name]) for m in METRICS]


BEST = "in bold (marked * in text)"


def mark_best(table: Table, columns: Sequence[str]) -> Table:
    """Mark the highest figure of each of ``columns`` (every tie), among the rows so far: rows
    of published figures are added after, and never marked."""
    for name in columns:
        j = table.columns.index(name)
        figures = [row[j].sort for row in table.rows if isinstance(row[j].sort, float | int)]
        if len(set(figures)) < 2:  # one figure, or all equal: nothing stands out
            continue
        top = max(figures)
        for row in table.rows:
            if row[j].sort == top:
                row[j] = dataclasses.replace(row[j], best=True)
    return table


def _backbone(scored: Scored) -> Cell:
    backbone = scored.record.config.get("backbone")
    return Cell(str(backbone), str(backbone)) if backbone else Cell("-", "")


def _training(scored: Scored) -> Cell:
    kind = scored.record.info.get("training") or "-"
    return Cell(kind, kind)


def leaderboard(slug: str, title: str, entries: Sequence[tuple[str, Scored]],
                calibration_split: str | None, confidence: float) -> Table:
    """A row per method (the attribute-binding write-up's tables 1-2): its backbone, whether it
    was trained, threshold, every metric (intervals where the metric has them), n; semantic data
    adds the dataset-level mIoU. The best figure of each metric is marked."""
    semantic = any(s.semantic is not None for _, s in entries)
    columns = ["Method", "Backbone", "Training", "Threshold", *METRIC_COLUMNS, "n"]
    first_metric = columns.index(METRIC_COLUMNS[0])
    if semantic:
        columns.insert(first_metric + len(INTERVALLED), "semantic mIoU")
    rows = []
    for label, s in entries:
        row = [Cell(label, label, link=run_link(s.run_key)), _backbone(s), _training(s),
               _threshold_cell(s), *_metric_cells(s), Cell(str(s.n), s.n)]
        if semantic:
            row.insert(first_metric + len(INTERVALLED), pct(s.figure(SEMANTIC_MIOU)))
        rows.append(row)
    notes = [f"Metrics in percent; {', '.join(INTERVALLED)} with {confidence:.0%} bootstrap "
             f"intervals (images resampled); the best measured figure of each column {BEST}. "
             f"Training: trained (a checkpoint fitted on the data's train split) or "
             f"training-free."] + _threshold_notes([s for _, s in entries], calibration_split)
    figures = [*METRIC_COLUMNS, *(["semantic mIoU"] if semantic else [])]
    return mark_best(Table(slug, title, columns, rows, notes), figures)


def breakdown_table(slug: str, title: str, field_name: str,
                    entries: Sequence[tuple[str, dict[str, dict[str, float]]]]) -> Table | None:
    """mIoU and oIoU per value of a sample field (RefShapes: attribute, relation, plain)."""
    groups = sorted({g for _, per in entries for g in per})
    if not groups:
        return None
    sizes = {g: next(per[g]["n"] for _, per in entries if g in per) for g in groups}
    columns = ["Method", *(f"{g} {metric} (n={sizes[g]:.0f})" for g in groups
                           for metric in ("mIoU", "oIoU"))]
    rows = [[Cell(label, label), *(_group_cell(per.get(g, {}), metric) for g in groups
                                   for metric in ("mIoU", "oIoU"))] for label, per in entries]
    table = Table(slug, title, columns, rows, [
        f"Metrics in percent per value of the sample field '{field_name}', at each method's "
        f"threshold, with bootstrap intervals over the group's images; the best of each column "
        f"{BEST}."])
    return mark_best(table, columns[1:])


def _group_cell(group: dict[str, float], metric: str) -> Cell:
    cell = pct(group.get(metric))
    low, high = group.get(f"{metric}_low"), group.get(f"{metric}_high")
    if low is None or high is None or math.isnan(low):
        return cell
    return Cell(cell.text, cell.sort, f"{100 * low:.2f}", f"{100 * high:.2f}")


def comparison_table(slug: str, title: str, pairs: Sequence[tuple[str, str, PairedResult]],
                     confidence: float, adjusted: Sequence[float] | None = None,
                     family: int | None = None, split_values: Sequence[str] | None = None) -> Table:
    """Paired comparisons on the same samples: difference, interval, p-value (and its Holm
    adjustment over the page's ``family`` of tests), wins/ties/losses."""
    columns = ["A", "B", "ΔmIoU (A−B)", "p-value", "wins", "ties", "losses", "images"]
    if split_values is not None:
        columns.insert(2, "subset")
    if adjusted is not None:
        columns.insert(columns.index("p-value") + 1, "p (Holm)")
    rows = []
    for i, (a, b, r) in enumerate(pairs):
        diff = Cell(f"{100 * r.diff:+.2f}", round(100 * r.diff, 6), f"{100 * r.interval.low:+.2f}",
                    f"{100 * r.interval.high:+.2f}")
        row = [Cell(a, a), Cell(b, b), diff, p_value(r.p_value, r.resamples),
               Cell(str(r.wins), r.wins), Cell(str(r.ties), r.ties),
               Cell(str(r.losses), r.losses), Cell(str(r.clusters), r.clusters)]
        if split_values is not None:
            row.insert(2, Cell(f"{split_values[i]} (n={r.n})", split_values[i]))
        if adjusted is not None:
            row.insert(columns.index("p (Holm)"), p_value(adjusted[i], r.resamples))
        rows.append(row)
    notes = [f"ΔmIoU in points with a {confidence:.0%} paired bootstrap interval over images; "
             f"two-sided p-value of a sign-flip permutation test on per-image differences; "
             f"wins/ties/losses count samples where A's IoU is higher/equal/lower."]
    if adjusted is not None:
        notes.append(f"p (Holm): adjusted for the {family} paired tests of this page (Holm's "
                     f"step-down method); read significance from it.")
    return Table(slug, title, columns, rows, notes)


def ablation_table(slug: str, title: str, params: Sequence[str],
                   cells: Sequence[tuple[dict[str, str], Scored]], calibration_split: str | None,
                   confidence: float) -> Table:
    """A row per grid cell (the attribute-binding write-up's tables 3-4): its parameter values,
    threshold and metrics."""
    columns = [*params, "Threshold", *METRIC_COLUMNS]
    rows = []
    for values, scored in cells:
        link = run_link(scored.run_key)
        shown = [Cell(v, _number_or_text(v), link=link) for v in values.values()]
        rows.append([*shown, _threshold_cell(scored), *_metric_cells(scored)])
    notes = [f"One run per row; {', '.join(INTERVALLED)} in percent with {confidence:.0%} "
             f"bootstrap intervals; the best of each column {BEST}."] + _threshold_notes(
                 [s for _, s in cells], calibration_split)
    return mark_best(Table(slug, title, columns, rows, notes), METRIC_COLUMNS)


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


# -- text --------------------------------------------------------------------------------------
def with_interval_text(cell: Cell, sep: str = " ") -> str:
    return cell.text if cell.low is None else f"{cell.text}{sep}[{cell.low}, {cell.high}]"


def to_text(table: Table) -> str:
    body = [[with_interval_text(dataclasses.replace(c, text=c.text + "*") if c.best else c)
             for c in row] for row in table.rows]
    return "\n".join([table.title, *aligned([table.columns, *body], markdown=False), *table.notes])


def aligned(lines: list[list[str]], markdown: bool) -> list[str]:
    widths = [max(3, *(len(line[j]) for line in lines)) for j in range(len(lines[0]))]
    pad = lambda line: [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))]  # noqa: E731
    if markdown:
        rule = ["-" * w if j == 0 else "-" * (w - 1) + ":" for j, w in enumerate(widths)]
        return ["| " + " | ".join(pad(line)) + " |" for line in [lines[0], rule, *lines[1:]]]
    return ["  ".join(pad(line)) for line in [lines[0], ["-" * w for w in widths], *lines[1:]]]


# -- published figures ------------------------------------------------------------------------
REPORTED_NOTE = ("Rows marked [reported] are figures their authors reported, on their data and "
                 "protocol (see Published figures): not measured here.")


def with_reported(table: Table, entries: Sequence[Reported]) -> Table:
    """A leaderboard with the published figures of its data set and split as rows marked
    "reported" (a figure the source does not give is "-")."""
    if not entries:
        return table
    for entry in entries:
        row = []
        for column in table.columns:
            metric = SEMANTIC_MIOU if column == "semantic mIoU" else column
            if column == "Method":
                text = f"{entry.method} [reported: {entry.work.short()}]"
                row.append(Cell(text, text))
            elif column == "Threshold":
                row.append(Cell("reported" if entry.threshold is None
                                else f"{entry.threshold:.2f} (reported)", -2.0))
            elif column == "Backbone":
                row.append(Cell(entry.backbone, entry.backbone))
            elif metric in entry.metrics:
                row.append(Cell(f"{entry.metrics[metric]:.2f}", entry.metrics[metric]))
            else:
                row.append(Cell("-"))
        table.rows.append(row)
    table.notes.append(REPORTED_NOTE)
    return table


def reported_table(slug: str, title: str, entries: Sequence[Reported]) -> Table:
    """The published figures a page shows, each with its citation, source and protocol."""
    columns = ["Work", "Method", "Source", "Data", "Backbone", "Protocol", "Reported (percent)"]
    rows = []
    for e in entries:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in e.metrics.items()) or curve_text(e)
        if e.metrics and e.curve:
            figures += "; " + curve_text(e)
        rows.append([Cell(e.work.citation()), Cell(e.method), Cell(e.source),
                     Cell(f"{e.dataset} {e.split}"), Cell(e.backbone), Cell(e.protocol_line()),
                     Cell(figures)])
    return Table(slug, title, columns, rows, [
        "As reported by their authors, on their data, weights and protocol; not measured by "
        "refbench. Compare with care: a data set, split or protocol that differs from a "
        "leaderboard's makes its figures incomparable."])
