"""From a spec to the figures a report shows: a thin caller of the evaluation core.

For each data set, the spec's methods are evaluated by ``refbench.evaluate``'s core on the
reported splits and the calibration split (each method built once, one in memory at a time);
each grid is evaluated by the same core, batch-major. This module then adds what only a report
shows: the paired comparisons and the breakdowns. Nothing here renders: ``render`` and
``exports`` turn the result into pages and files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from refbench import distributed, provenance
from refbench.candidates import Candidate, candidate, check_labels
from refbench.data.sample import Sample
from refbench.data.source import DataSource
from refbench.errors import UserError
from refbench.core import Settings, check_evaluation, run_evaluation
from refbench.grid import GridRun, check_grid, expand
from refbench.plugins import PluginHost
from refbench.progress import JobProgress
from refbench.report.spec import DatasetEntry, GridEntry, ReportSpec
from refbench.results.calibration import Calibration
from refbench.results.files import timestamp
from refbench.results.scored import Scored
from refbench.results.stats import PairedResult, holm, paired_test
from refbench.results.summary import Results
from refbench.results.tables import Table, ablation_table, slug
from refbench.store import Store


@dataclass
class SplitReport:
    """Everything a leaderboard of one data set split shows."""

    dataset: DatasetEntry
    split: str
    results: Results  # the data set's evaluation (all its reported splits)
    comparisons: list[tuple[str, str, PairedResult]] = field(default_factory=list)
    # (A, B, value of spec.compare_by in A's rows, the test within that value)
    comparisons_by: list[tuple[str, str, str, PairedResult]] = field(default_factory=list)
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # Holm-adjusted p-values, the family being every paired test of the report (set by adjust)
    adjusted: list[float] = field(default_factory=list)
    adjusted_by: list[float] = field(default_factory=list)

    @property
    def scored(self) -> dict[str, Scored]:
        return self.results.on(self.split)

    @property
    def samples(self) -> list[Sample]:
        return self.results.samples[self.split]

    @property
    def calibration_runs(self) -> dict[str, Scored]:
        return self.results.calibrating

    @property
    def slug(self) -> str:
        return slug(f"{self.dataset.name}-{self.split}")


@dataclass
class GridReport:
    entry: GridEntry
    result: GridRun

    @property
    def slug(self) -> str:
        return slug(f"grid-{self.entry.grid.method}-{'-'.join(self.entry.grid.params)}-"
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


def calibration_for(spec: ReportSpec, dataset: DatasetEntry) -> Calibration:
    return dataclasses.replace(spec.calibration, split=dataset.calibration_split)


def source_of(dataset: DatasetEntry) -> DataSource:
    return DataSource(dataset.name, dataset.root, dict(dataset.options))


def settings_of(spec: ReportSpec, progress: bool) -> Settings:
    return Settings(seed=spec.seed, limit=spec.limit, batch_size=spec.batch_size,
                    sweep_step=spec.sweep_step, progress=progress, protocol=spec.protocol,
                    skip_empty_gt=spec.skip_empty_gt)


@dataclass
class SpecPlan:
    """A spec resolved: the methods as candidates, every grid's cells."""

    methods: list[Candidate]
    grids: list[list[Candidate]]


def check_spec(host: PluginHost, spec: ReportSpec) -> SpecPlan:
    """Fail on every mistake a spec can hold before anything is computed or opened: unknown
    methods, datasets, options or parameters, bad config values, thresholds that would be
    tuned on a reported split."""
    settings = settings_of(spec, False)
    for dataset in spec.datasets:
        check_evaluation(host, source_of(dataset), dataset.splits, calibration_for(spec, dataset),
                         settings)
    methods = [candidate(host, m.name, m.overrides, label=m.label) for m in spec.methods]
    check_labels(methods)
    grids = []
    for grid in spec.grids:
        grids.append(check_grid(host, grid.grid))
        dataset = spec.dataset(grid.dataset)
        check_evaluation(host, source_of(dataset), [grid.split], calibration_for(spec, dataset),
                         settings)
    return SpecPlan(methods, grids)


def _computed_splits(spec: ReportSpec, dataset: DatasetEntry, reported: list[str]) -> int:
    cal = calibration_for(spec, dataset).split
    return len(dict.fromkeys([*reported, *([cal] if cal else [])]))


def job_progress(spec: ReportSpec, plan: SpecPlan, enabled: bool, leaderboards: bool = True,
                 grids: bool = True) -> JobProgress:
    """One progress over every run the spec computes."""
    runs = sum(len(plan.methods) * _computed_splits(spec, d, d.splits) for d in spec.datasets) if leaderboards else 0
    if grids:
        runs += sum(len(cells) * _computed_splits(spec, spec.dataset(g.dataset), [g.split])
                    for g, cells in zip(spec.grids, plan.grids))
    return JobProgress(runs, enabled)


def run_leaderboards(host: PluginHost, spec: ReportSpec, store: Store, progress: bool = True,
                     plan: SpecPlan | None = None, cluster: distributed.Cluster | None = None,
                     job: JobProgress | None = None) -> list[SplitReport]:
    """Evaluate every method on every reported and calibration split, and analyse them."""
    plan = plan or check_spec(host, spec)
    cluster = cluster or distributed.detect()
    own = job is None
    job = job or job_progress(spec, plan, progress and cluster.is_main, grids=False)
    reports = []
    for dataset in spec.datasets:
        results = run_evaluation(
            host, plan.methods, source_of(dataset), dataset.splits, store=store,
            settings=settings_of(spec, progress), calibration=calibration_for(spec, dataset),
            statistics=spec.stats, breakdown=spec.breakdown, cluster=cluster, generate=True,
            progress=job)
        for split in dataset.splits:
            report = SplitReport(dataset, split, results)
            _analyse(spec, report)
            reports.append(report)
    adjust(reports)
    if own:
        job.close()
    return reports


def _analyse(spec: ReportSpec, report: SplitReport) -> None:
    """Paired comparisons (also within each value of ``compare_by``) and breakdowns of one split."""
    scored = report.scored
    stats = spec.stats
    for a, b in spec.compare:
        sa, sb = scored[a], scored[b]  # rows in the split's sample order: aligned
        ia, ib, images = sa.rows.ious(sa.k), sb.rows.ious(sb.k), sa.rows.image_ids
        report.comparisons.append((a, b, paired_test(ia, ib, images, stats.resamples,
                                                     stats.confidence, stats.seed)))
        if spec.compare_by:
            values = sa.rows.values(spec.compare_by)
            for value in sorted(set(values)):
                keep = values == value
                report.comparisons_by.append((a, b, value, paired_test(
                    ia[keep], ib[keep], images[keep], stats.resamples, stats.confidence, stats.seed)))
    if spec.breakdown:
        for label, s in scored.items():
            if groups := s.breakdowns.get(spec.breakdown):
                report.breakdowns[label] = groups


def adjust(reports: list[SplitReport]) -> None:
    """Holm-adjust the p-values of all the report's paired tests as one family (and, as a family
    of their own, the tests within the values of ``compare_by``)."""
    for tests, target in (("comparisons", "adjusted"), ("comparisons_by", "adjusted_by")):
        p_values = [test[-1].p_value for r in reports for test in getattr(r, tests)]
        adjusted = iter(holm(p_values))
        for r in reports:
            setattr(r, target, [next(adjusted) for _ in getattr(r, tests)])


def family_size(reports: list[SplitReport], tests: str = "comparisons") -> int:
    return sum(len(getattr(r, tests)) for r in reports)


def run_grids(host: PluginHost, spec: ReportSpec, store: Store, progress: bool = True,
              plan: SpecPlan | None = None, cluster: distributed.Cluster | None = None,
              job: JobProgress | None = None) -> list[GridReport]:
    plan = plan or check_spec(host, spec)
    cluster = cluster or distributed.detect()
    own = job is None
    job = job or job_progress(spec, plan, progress and cluster.is_main, leaderboards=False)
    out = []
    for entry, cells in zip(spec.grids, plan.grids):
        dataset = spec.dataset(entry.dataset)
        results = run_evaluation(
            host, cells, source_of(dataset), [entry.split], store=store,
            settings=settings_of(spec, progress), calibration=calibration_for(spec, dataset),
            statistics=spec.stats, together=True, cluster=cluster, generate=True, progress=job)
        out.append(GridReport(entry, GridRun(entry.grid, results, expand(entry.grid))))
    if own:
        job.close()
    return out


def grid_table(spec: ReportSpec, grid: GridReport) -> Table:
    entry = grid.entry
    return ablation_table(grid.slug, f"{entry.grid.name} on {entry.dataset} {entry.split}",
                          list(entry.grid.params), grid.result.cells,
                          spec.dataset(entry.dataset).calibration_split, spec.stats.confidence)


def run_spec_grids(host: PluginHost, spec: ReportSpec, progress: bool = True) -> list[Table]:
    """``refbench grid SPEC``: the spec's grids only, as ablation tables."""
    if not spec.grids:
        raise UserError(f"{spec.path} defines no grids")
    plan = check_spec(host, spec)
    with Store(spec.store / "store.sqlite") as store:
        return [grid_table(spec, g) for g in run_grids(host, spec, store, progress, plan)]


def build(host: PluginHost, spec: ReportSpec, store: Store, progress: bool = True,
          cluster: distributed.Cluster | None = None) -> Report:
    """Run what is missing and score everything the spec shows (the gallery aside)."""
    plan = check_spec(host, spec)
    cluster = cluster or distributed.detect()
    job = job_progress(spec, plan, progress and cluster.is_main)
    try:
        splits = run_leaderboards(host, spec, store, progress, plan, cluster, job)
        grids = run_grids(host, spec, store, progress, plan, cluster, job)
    finally:
        job.close()
    keys = [s.run_key for r in splits for s in r.scored.values()]
    keys += [s.run_key for r in splits for s in r.calibration_runs.values()]
    keys += [s.run_key for g in grids for _, s in g.result.cells]
    runs = {key: store.run(key) for key in dict.fromkeys(keys)}  # all registered by the runs above
    return Report(spec, splits, grids, {k: v for k, v in runs.items() if v is not None})
