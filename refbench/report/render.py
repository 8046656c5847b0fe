"""The static site: jinja2 templates, autoescaped, with nothing loaded from the network.

Expressions and labels come from data sets and specs, so they are untrusted text: autoescaping
is on for every template and for strings, and the only markup passed through unescaped is the
SVG that ``charts`` builds (which escapes its own text). Pictures are files next to the pages,
referenced by relative paths, so the site works from disk, offline, and can be copied anywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from refbench.report.build import GridReport, Report, family_size, grid_table
from refbench.report.charts import Baseline, Mark, Point, Series, line_chart
from refbench.report.exports import write_exports
from refbench.report.gallery import Gallery, heat_gradient
from refbench.results.scored import Scored
from refbench.results.tables import (Table, breakdown_table, comparison_table, reported_table, with_reported)

TABLES_DIR = "tables"
RUNS_DIR = "runs"


def environment() -> Environment:
    env = Environment(loader=PackageLoader("refbench.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
    env.filters["pct"] = lambda value: "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"
    return env


def _exported(table: Table | None, site: Path) -> dict[str, Any] | None:
    if table is None:
        return None
    files = write_exports(table, site / TABLES_DIR)
    return {"table": table, "exports": {fmt: f"{TABLES_DIR}/{name}" for fmt, name in files.items()}}


def grid_chart(grid: GridReport, report: Report) -> Markup:
    """The grid's metric against its first parameter, one line per combination of the others,
    with its bootstrap band and, when the spec names one, the baseline method's figure on the
    same split drawn across."""
    metric = grid.entry.grid.metric
    first, *others = grid.entry.grid.params
    series: dict[str, list[Point]] = {}
    for values, scored in grid.result.cells:
        name = ", ".join(f"{k}={values[k]}" for k in others) or metric
        interval = scored.intervals.get(metric)
        value = scored.metrics[metric]
        series.setdefault(name, []).append(Point(
            values[first], 100 * value,
            100 * interval.low if interval else None, 100 * interval.high if interval else None))
    title = f"{metric} against {first}: {grid.entry.grid.method} on {grid.entry.dataset} {grid.entry.split}"
    baselines = []
    if grid.entry.baseline:
        for split in report.splits:
            if (split.dataset.name, split.split) == (grid.entry.dataset, grid.entry.split):
                figure = split.scored[grid.entry.baseline].metrics[metric]
                baselines.append(Baseline(100 * figure, grid.entry.baseline))
    confidence = round(100 * report.spec.stats.confidence)
    return line_chart([Series(n, p) for n, p in series.items()], first, f"{metric} (%)", title,
                      band_label=f"shaded: {confidence}% bootstrap interval", baselines=baselines)


def render_site(report: Report, gallery: Gallery | None, site: Path) -> list[Table]:
    """Write index.html, gallery.html, one page per run and every table's exports; returns the
    tables for the console: per split its leaderboard, comparisons and breakdown, then the grids."""
    spec = report.spec
    env = environment()
    site.mkdir(parents=True, exist_ok=True)
    confidence = spec.stats.confidence
    family, family_by = family_size(report.splits), family_size(report.splits, "comparisons_by")
    leaderboards = []
    for split in report.splits:
        title = f"{split.dataset.name} {split.split}"
        leaderboards.append({
            "title": title, "slug": split.slug, "n": len(split.samples),
            "calibration_split": split.dataset.calibration_split,
            "leaderboard": _exported(with_reported(split.results.table(split.split),
                [e for e in spec.reported if (e.dataset, e.split) == (split.dataset.name, split.split)]),
                site),
            "comparisons": _exported(comparison_table(
                f"comparisons-{split.slug}", f"Paired comparisons: {title}", split.comparisons,
                confidence, split.adjusted if family > 1 else None, family), site)
            if split.comparisons else None,
            "comparisons_by": _exported(comparison_table(
                f"comparisons-by-{split.slug}", f"Paired comparisons by {spec.compare_by}: {title}",
                [(a, b, r) for a, b, _, r in split.comparisons_by], confidence,
                split.adjusted_by if family_by > 1 else None, family_by,
                [v for _, _, v, _ in split.comparisons_by]), site)
            if split.comparisons_by else None,
            "breakdown": _exported(breakdown_table(
                f"breakdown-{split.slug}", f"Breakdown by {spec.breakdown}: {title}",
                spec.breakdown or "", list(split.breakdowns.items())), site),
        })
    grids = [{"title": g.entry.grid.name, "slug": g.slug, "dataset": g.entry.dataset,
              "split": g.entry.split, "chart": grid_chart(g, report),
              "table": _exported(grid_table(spec, g), site)} for g in report.grids]
    published = _exported(reported_table("reported", "Published figures", spec.reported),
                          site) if spec.reported else None
    common = {"report": report, "spec": spec, "limit": spec.limit, "root": "", "gallery": gallery}
    (site / "index.html").write_text(env.get_template("index.html").render(
        **common, leaderboards=leaderboards, grids=grids, published=published,
        methods=_methods(report)), encoding="utf-8")
    if gallery is not None:
        (site / "gallery.html").write_text(env.get_template("gallery.html").render(
            **common, heat_gradient=heat_gradient()),
                                           encoding="utf-8")
    (site / RUNS_DIR).mkdir(exist_ok=True)
    for key, record in report.runs.items():
        (site / RUNS_DIR / f"{key}.html").write_text(env.get_template("run.html").render(
            **{**common, "root": "../"}, run=record, uses=_uses(report, key)),
            encoding="utf-8")
    shown = [lb[part]["table"] for lb in leaderboards
             for part in ("leaderboard", "comparisons", "comparisons_by", "breakdown") if lb[part]]
    return shown + [g["table"]["table"] for g in grids]


def sweep_chart(scored: Scored, where: str) -> Markup | None:
    """A score-map run's oIoU and mIoU at every threshold of the sweep, the reported threshold
    marked: on a calibration split, the curve that chose it."""
    if scored.rows.is_mask:
        return None
    sweep = scored.rows.sweep()
    series = [Series(metric, [Point(f"{row['threshold']:.2f}", 100 * row[metric]) for row in sweep])
              for metric in ("mIoU", "oIoU")]
    chosen = scored.threshold.value
    marks = [Mark(f"{chosen:.2f}", f"reported threshold {chosen:.2f}")] if chosen is not None else []
    return line_chart(series, "threshold", "percent", f"threshold sweep: {where}", marks=marks)


def _methods(report: Report) -> list[dict[str, Any]]:
    """Each of the spec's methods as its runs describe it: name, kind, summary and source."""
    out = []
    for entry in report.spec.methods:
        scored = next((s.scored[entry.label] for s in report.splits if entry.label in s.scored), None)
        info = scored.record.info if scored is not None else {}
        out.append({"label": entry.label, "name": entry.name, "training": info.get("training"),
                    "summary": info.get("summary", ""), "source": info.get("source", "")})
    return out


def _uses(report: Report, run_key: str) -> list[dict[str, Any]]:
    """Where a run appears: which table, as which label, at which threshold, with its sweep."""
    uses = []
    for split in report.splits:
        for label, scored in split.scored.items():
            if scored.run_key == run_key:
                uses.append({"where": f"leaderboard {split.dataset.name} {split.split}", "label": label,
                             "scored": scored})
        for label, scored in split.calibration_runs.items():
            if scored.run_key == run_key and split.split == split.dataset.splits[0]:
                uses.append({"where": f"calibration of {split.dataset.name} on "
                                      f"{split.dataset.calibration_split}", "label": label,
                             "scored": scored})
    for grid in report.grids:
        for values, scored in grid.result.cells:
            if scored.run_key == run_key:
                label = ", ".join(f"{k}={v}" for k, v in values.items())
                uses.append({"where": f"grid {grid.entry.grid.name} on {grid.entry.dataset} "
                                      f"{grid.entry.split}", "label": label, "scored": scored})
    for use in uses:
        use["chart"] = sweep_chart(use["scored"], f"{use['label']}, {use['where']}")
    return uses
