"""From a spec to the figures a report shows: run what the store lacks, then score it.

For each data set, every method is evaluated on the reported splits and on the calibration
split (each method built once, one in memory at a time), the threshold is chosen on the
calibration split, and each reported split gets its scores with intervals, the paired
comparisons and the breakdown. Grids run batch-major through ``refbench.grid``. Nothing here
renders: ``render`` and ``exports`` turn the result into pages and files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from refbench import provenance
from refbench.calibration import check_split_policy
from refbench.errors import UserError
from refbench.grid import GridRun, check_grid, run_grid
from refbench.plugins import PluginHost
from refbench.report.spec import DatasetEntry, GridEntry, ReportSpec
from refbench.report.tables import Table, ablation_table
from refbench.results import breakdown, timestamp
from refbench.runner import (MethodRun, RunOptions, SplitPlan, plan_split, resolve_config,
                             run_configs)
from refbench.scorecard import Calibration, Scored, choose, score
from refbench.stats import PairedResult, paired_test
from refbench.store import Store


@dataclass
class SplitReport:
    """Everything a leaderboard of one data set split shows."""

    dataset: DatasetEntry
    plan: SplitPlan
    scored: dict[str, Scored]  # method label -> figures
    calibration_runs: dict[str, MethodRun]  # method label -> its run on the calibration split
    comparisons: list[tuple[str, str, PairedResult]] = field(default_factory=list)
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return self.plan.split

    @property
    def slug(self) -> str:
        return _slug(f"{self.dataset.name}-{self.split}")


@dataclass
class GridReport:
    entry: GridEntry
    result: GridRun

    @property
    def slug(self) -> str:
        return _slug(f"grid-{self.entry.grid.method}-{'-'.join(self.entry.grid.params)}-"
                     f"{self.entry.dataset}-{self.entry.split}")


@dataclass
class Report:
    spec: ReportSpec
    splits: list[SplitReport]
    grids: list[GridReport]
    runs: dict[str, dict[str, Any]]  # run key -> store record, for the run pages
    created: str = field(default_factory=timestamp)
    versions: dict[str, str | None] = field(default_factory=provenance.versions)
    git_hash: str | None = field(default_factory=provenance.git_hash)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def calibration_for(spec: ReportSpec, dataset: DatasetEntry) -> Calibration:
    return dataclasses.replace(spec.calibration, split=dataset.calibration_split)


def run_options(spec: ReportSpec, dataset: DatasetEntry, split: str, progress: bool) -> RunOptions:
    return RunOptions(methods=[m.name for m in spec.methods], dataset=dataset.name, split=split,
                      data_root=dataset.root, dataset_options=dict(dataset.options),
                      limit=spec.limit, batch_size=spec.batch_size, seed=spec.seed,
                      out=spec.store, threshold=spec.calibration.fixed, sweep_step=spec.sweep_step,
                      progress=progress)


def check_spec(host: PluginHost, spec: ReportSpec) -> None:
    """Fail on every mistake a spec can hold before anything is computed: unknown methods,
    datasets or parameters, bad config values, thresholds that would be tuned on a reported
    split."""
    for dataset in spec.datasets:
        host.dataset(dataset.name)
        calibration = calibration_for(spec, dataset)
        if calibration.split is not None:
            check_split_policy(calibration.split, dataset.splits, calibration.tune_on_reported_split,
                               f"{spec.path.name}: dataset {dataset.name}")
    for method in spec.methods:
        resolve_config(host.method(method.name), method.overrides)
    for grid in spec.grids:
        check_grid(host, grid.grid)
        calibration = calibration_for(spec, spec.dataset(grid.dataset))
        if calibration.split is not None:
            check_split_policy(calibration.split, [grid.split], calibration.tune_on_reported_split,
                               f"{spec.path.name}: grid {grid.grid.name}")


def run_leaderboards(host: PluginHost, spec: ReportSpec, store: Store,
                     progress: bool = True) -> list[SplitReport]:
    """Evaluate every method on every reported and calibration split, and score them."""
    check_spec(host, spec)
    configs = [(host.method(m.name), m.overrides) for m in spec.methods]
    reports = []
    for dataset in spec.datasets:
        calibration = calibration_for(spec, dataset)
        splits = list(dict.fromkeys([*dataset.splits, *([calibration.split] if calibration.split else [])]))
        plans = [plan_split(host, run_options(spec, dataset, split, progress)) for split in splits]
        runs = run_configs(host, configs, plans, store, run_options(spec, dataset, splits[0], progress))
        cal_index = splits.index(calibration.split) if calibration.split else None
        for i, split in enumerate(dataset.splits):
            report = SplitReport(dataset, plans[i], {}, {})
            for method, per_plan in zip(spec.methods, runs):
                calibrating = (per_plan[cal_index], plans[cal_index]) if cal_index is not None else None
                threshold = choose(store, calibration, split, calibrating)
                report.scored[method.label] = score(store, per_plan[i], plans[i], threshold, spec.stats)
                if calibrating is not None:
                    report.calibration_runs[method.label] = calibrating[0]
            _analyse(spec, report)
            reports.append(report)
    return reports


def _analyse(spec: ReportSpec, report: SplitReport) -> None:
    """Paired comparisons and breakdowns of one split."""
    for a, b in spec.compare:
        sa, sb = report.scored[a], report.scored[b]  # rows in the split's sample order: aligned
        report.comparisons.append((a, b, paired_test(
            sa.samples.ious(sa.k), sb.samples.ious(sb.k), sa.samples.image_ids,
            spec.stats.resamples, spec.stats.confidence, spec.stats.seed)))
    if spec.breakdown:
        for label, s in report.scored.items():
            if groups := breakdown(s.samples, s.k, spec.breakdown):
                report.breakdowns[label] = groups


def run_grids(host: PluginHost, spec: ReportSpec, store: Store, progress: bool = True) -> list[GridReport]:
    out = []
    for entry in spec.grids:
        dataset = spec.dataset(entry.dataset)
        options = run_options(spec, dataset, entry.split, progress)
        result = run_grid(host, entry.grid, options, store, calibration_for(spec, dataset), spec.stats)
        out.append(GridReport(entry, result))
    return out


def grid_table(spec: ReportSpec, grid: GridReport) -> Table:
    entry = grid.entry
    return ablation_table(grid.slug, f"{entry.grid.name} on {entry.dataset} {entry.split}",
                          list(entry.grid.params), grid.result.cells,
                          spec.dataset(entry.dataset).calibration_split, spec.stats.confidence)


def run_spec_grids(host: PluginHost, spec: ReportSpec, no_progress: bool = False) -> list[Table]:
    """``refbench grid SPEC``: the spec's grids only, as ablation tables."""
    if not spec.grids:
        raise UserError(f"{spec.path} defines no grids")
    check_spec(host, spec)
    with Store(spec.store / "store.sqlite") as store:
        return [grid_table(spec, g) for g in run_grids(host, spec, store, not no_progress)]


def build(host: PluginHost, spec: ReportSpec, store: Store, progress: bool = True) -> Report:
    """Run what is missing and score everything the spec shows (the gallery aside)."""
    splits = run_leaderboards(host, spec, store, progress)
    grids = run_grids(host, spec, store, progress)
    keys = [s.run.record.run_key for r in splits for s in r.scored.values()]
    keys += [run.record.run_key for r in splits for run in r.calibration_runs.values()]
    keys += [c.scored.run.record.run_key for g in grids for c in g.result.cells]
    runs = {key: store.run(key) for key in dict.fromkeys(keys)}  # all registered by the runs above
    return Report(spec, splits, grids, {k: v for k, v in runs.items() if v is not None})
