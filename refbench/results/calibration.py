"""Choosing the reported threshold of a score-map method honestly.

A score map becomes a mask at a threshold, and the best threshold differs by method. Picking it
on the split that is then reported lets the split's own noise flatter the score (every method
gets its luckiest threshold), so the threshold is chosen on a *calibration* split and applied,
unchanged, to the reported ones. Tuning on a reported split is refused unless explicitly forced,
and then every figure it touches is marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refbench.errors import UserError, did_you_mean
from refbench.results.metrics import SEMANTIC_MIOU
from refbench.results.scoring import threshold_index

# criterion -> (which sweep of a run's rows, the metric maximised in it)
CRITERIA = {
    "mIoU": ("sweep", "mIoU"),
    "oIoU": ("sweep", "oIoU"),
    SEMANTIC_MIOU: ("semantic_sweep", "mIoU"),
}
DEFAULT_CRITERION = "mIoU"
TUNED_MARK = "†"
TUNED_NOTE = "tuned on the reported split"


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise did_you_mean(criterion, CRITERIA, "calibration criterion")
    return criterion


@dataclass(frozen=True)
class Calibration:
    """How thresholds are chosen: on ``split`` by ``criterion``; ``split=None`` reports every
    score-map run at ``fixed`` instead (chosen before seeing any data, so also honest)."""

    split: str | None = "val"
    criterion: str = DEFAULT_CRITERION
    tune_on_reported_split: bool = False
    fixed: float = 0.5
    # the split is the command line's default, not the user's choice: a data set without it
    # (COCO-Object's split is val2017) then reports at ``fixed`` instead of failing
    defaulted: bool = False

    def __post_init__(self) -> None:
        check_criterion(self.criterion)

    def check(self, reported: Sequence[str], thresholds: Sequence[float], where: str) -> None:
        """Before anything is computed: the fixed threshold is on the sweep, and thresholds
        are not tuned on a reported split unless that is forced."""
        if self.split is None:
            try:
                threshold_index(thresholds, self.fixed)
            except ValueError:
                raise UserError(f"{where}: threshold {self.fixed} is not on the sweep: pick one "
                                f"of {list(thresholds)}") from None
        else:
            check_split_policy(self.split, reported, self.tune_on_reported_split, where)


@dataclass(frozen=True)
class Threshold:
    """The threshold a run is reported at: ``None`` for mask methods."""

    value: float | None
    criterion: str = DEFAULT_CRITERION
    calibration_split: str | None = None
    score: float | None = None  # the criterion's value on the calibration split
    tuned_on_reported: bool = False

    def label(self) -> str:
        if self.value is None:
            return "mask"
        return f"{self.value:.2f}" + (TUNED_MARK if self.tuned_on_reported else "")

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.calibration_split, "criterion": self.criterion, "score": self.score,
                "tuned_on_reported_split": self.tuned_on_reported}


def choose_threshold(sweeps: dict[str, list[dict[str, Any]] | None],
                     criterion: str = DEFAULT_CRITERION) -> tuple[float, float]:
    """The sweep threshold maximising ``criterion``, with the value reached; ties go to the
    lowest threshold. ``sweeps`` holds a run's "sweep" and, on semantic data, "semantic_sweep"."""
    sweep_key, name = CRITERIA[check_criterion(criterion)]
    sweep = sweeps.get(sweep_key)
    if not sweep:
        raise UserError(f"calibration criterion {criterion!r} needs a {sweep_key.replace('_', ' ')} "
                        f"of a score-map method on {'semantic' if 'semantic' in sweep_key else 'any'} data")
    best = max(range(len(sweep)), key=lambda i: (sweep[i][name], -i))
    return float(sweep[best]["threshold"]), float(sweep[best][name])


def calibrated(calibration: Calibration, reported_split: str,
               sweeps: dict[str, list[dict[str, Any]] | None] | None, is_mask: bool) -> Threshold:
    """The threshold a run is reported at on ``reported_split``: the mask's own, the fixed one,
    or the one its calibration-split sweeps (``sweeps``) choose."""
    if is_mask:
        return Threshold(None)
    if calibration.split is None or sweeps is None:
        return Threshold(calibration.fixed, criterion="fixed")
    value, best = choose_threshold(sweeps, calibration.criterion)
    return Threshold(value, calibration.criterion, calibration.split, best,
                     tuned_on_reported=calibration.split == reported_split)


def check_split_policy(calibration_split: str, reported: Sequence[str], force: bool,
                       where: str) -> None:
    """Refuse to report a threshold tuned on the split it is reported on, unless forced."""
    if calibration_split in reported and not force:
        raise UserError(
            f"{where}: the calibration split {calibration_split!r} is also a reported split, so "
            f"its thresholds would be tuned on the data they are scored on; calibrate on another "
            f"split, or force it with tune_on_reported_split: true (the figures are then marked "
            f"{TUNED_MARK} {TUNED_NOTE})")
