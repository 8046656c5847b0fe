"""What one row of a leaderboard or ablation table reports for one run.

A run on a reported split is scored at a threshold chosen on the calibration split (or a fixed
one given up front), with bootstrap intervals over images. Grids and reports both go through
here, so a grid cell and a leaderboard row with the same config show the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refbench.calibration import DEFAULT_CRITERION, Threshold, check_criterion, choose_threshold
from refbench.metrics import threshold_index
from refbench.results import RunSamples, collect, load_run_samples
from refbench.runner import MethodRun, SplitPlan
from refbench.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval, bootstrap_ci
from refbench.store import Store


@dataclass(frozen=True)
class Calibration:
    """How thresholds are chosen: on ``split`` by ``criterion``; ``split=None`` reports every
    score-map run at ``fixed`` instead (chosen before seeing any data, so also honest)."""

    split: str | None = "val"
    criterion: str = DEFAULT_CRITERION
    tune_on_reported_split: bool = False
    fixed: float = 0.5

    def __post_init__(self) -> None:
        check_criterion(self.criterion)


@dataclass(frozen=True)
class StatsOptions:
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0


@dataclass
class Scored:
    """A run's figures on one split at its reported threshold."""

    run: MethodRun
    threshold: Threshold
    summary: dict[str, Any]  # results.collect at the threshold
    intervals: dict[str, Interval]  # oIoU, mIoU
    samples: RunSamples
    k: int  # index of the threshold in the sweep (any index for masks: they score the same)

    @property
    def metrics(self) -> dict[str, float]:
        return self.summary["metrics"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: config, fingerprint, threshold and how it was chosen, metrics, intervals."""
        t = self.threshold
        return {**self.run.result(self.summary),
                "threshold": t.value, "threshold_label": t.label(),
                "calibration": {"split": t.calibration_split, "criterion": t.criterion,
                                "score": t.score, "tuned_on_reported_split": t.tuned_on_reported},
                "intervals": {k: v.as_dict() for k, v in self.intervals.items()}}


def choose(store: Store, calibration: Calibration, reported_split: str,
           calibrating: tuple[MethodRun, SplitPlan] | None) -> Threshold:
    """The threshold a run is reported at on ``reported_split``, chosen from its run on the
    calibration split (``calibrating``; None when the calibration fixes the threshold)."""
    if calibration.split is None or calibrating is None:
        return Threshold(calibration.fixed, criterion="fixed")
    run, plan = calibrating
    summary = collect(store, run.record.run_key, plan.samples, plan.thresholds,
                      plan.thresholds[0], semantic=plan.dataset.task == "semantic")
    if summary["output"] == "mask":
        return Threshold(None)
    value, best = choose_threshold(summary, calibration.criterion)
    return Threshold(value, calibration.criterion, calibration.split, best,
                     tuned_on_reported=calibration.split == reported_split)


def score(store: Store, run: MethodRun, plan: SplitPlan, threshold: Threshold,
          stats: StatsOptions) -> Scored:
    """Figures of ``run`` on ``plan`` at ``threshold`` (masks: no threshold), with bootstrap
    intervals by image."""
    samples = load_run_samples(store, run.record.run_key, plan.samples, plan.thresholds)
    if samples.is_mask:
        threshold = Threshold(None)
    k = 0 if threshold.value is None else threshold_index(plan.thresholds, threshold.value)
    summary = collect(store, run.record.run_key, plan.samples, plan.thresholds,
                      plan.thresholds[k], semantic=plan.dataset.task == "semantic")
    intervals = bootstrap_ci(samples.inter[:, k], samples.union[:, k], samples.image_ids,
                             stats.resamples, stats.confidence, stats.seed)
    return Scored(run, threshold, summary, intervals, samples, k)
