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

# criterion -> (the sweep in a collect() summary, the metric maximised in it)
CRITERIA = {
    "mIoU": ("sweep", "mIoU"),
    "oIoU": ("sweep", "oIoU"),
    "semantic_mIoU": ("semantic_sweep", "mIoU"),
}
DEFAULT_CRITERION = "mIoU"
TUNED_MARK = "†"
TUNED_NOTE = "tuned on the reported split"


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


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise did_you_mean(criterion, CRITERIA, "calibration criterion")
    return criterion


def choose_threshold(summary: dict[str, Any], criterion: str = DEFAULT_CRITERION) -> tuple[float, float]:
    """The sweep threshold maximising ``criterion`` in a calibration summary (from
    ``results.collect``), with the value reached; ties go to the lowest threshold."""
    sweep_key, metric = CRITERIA[check_criterion(criterion)]
    sweep = summary.get(sweep_key)
    if not sweep:
        raise UserError(f"calibration criterion {criterion!r} needs a {sweep_key.replace('_', ' ')} "
                        f"of a score-map method on {'semantic' if 'semantic' in sweep_key else 'any'} data")
    best = max(range(len(sweep)), key=lambda i: (sweep[i][metric], -i))
    return float(sweep[best]["threshold"]), float(sweep[best][metric])


def check_split_policy(calibration_split: str, reported: Sequence[str], force: bool,
                       where: str) -> None:
    """Refuse to report a threshold tuned on the split it is reported on, unless forced."""
    if calibration_split in reported and not force:
        raise UserError(
            f"{where}: the calibration split {calibration_split!r} is also a reported split, so "
            f"its thresholds would be tuned on the data they are scored on; calibrate on another "
            f"split, or force it with tune_on_reported_split: true (the figures are then marked "
            f"{TUNED_MARK} {TUNED_NOTE})")
