"""Metrics, defined once: the only place that names them and says how they are computed.

Per sample we keep counts, not masks (as mmengine's IoUMetric does): I = |pred & gt| and the
predicted area at every threshold of a sweep, plus the ground-truth area; U = P + G - I.

Every referring metric is a *ratio of per-sample sums*: value = sum(numerator) / sum(denominator)
over the samples. oIoU sums I over U; mIoU sums each sample's IoU over a count of one per sample;
P@k sums an indicator over the same count. Written that way, one bootstrap (cluster sums of both
parts, see ``stats``) gives intervals for any metric, and a new metric is one entry in
``METRICS`` below: tables, results files, specs and the regression check all iterate over it.

Both-empty (U = 0) counts as IoU 1 (``empty``): predicting nothing for an empty target is
right. VPD's protocol counts it 0, and passes ``empty=0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

PRECISION_AT = (0.5, 0.6, 0.7, 0.8, 0.9)
# (inter, union, the IoU of a both-empty sample) -> one value per sample
PerSample = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def iou(inter: np.ndarray, union: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """Elementwise I/U with the both-empty case (U = 0) counted as ``empty``."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.full_like(union, empty)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _counts(inter: np.ndarray, union: np.ndarray, empty: float) -> np.ndarray:
    return np.asarray(inter, dtype=np.float64)


def _unions(inter: np.ndarray, union: np.ndarray, empty: float) -> np.ndarray:
    return np.asarray(union, dtype=np.float64)


def _ones(inter: np.ndarray, union: np.ndarray, empty: float) -> np.ndarray:
    return np.ones(np.shape(inter), dtype=np.float64)


def _at_least(k: float, inter: np.ndarray, union: np.ndarray, empty: float) -> np.ndarray:
    return (iou(inter, union, empty) >= k).astype(np.float64)


@dataclass(frozen=True)
class Metric:
    """value = sum(numerator) / sum(denominator) over samples (``when_empty`` if that sum is 0)."""

    name: str
    numerator: PerSample
    denominator: PerSample
    when_empty: float
    description: str
    interval: bool = False  # shown with its bootstrap interval in leaderboards

    def value(self, inter: np.ndarray, union: np.ndarray, empty: float = 1.0) -> float:
        total = float(self.denominator(inter, union, empty).sum())
        return (float(self.numerator(inter, union, empty).sum() / total) if total > 0
                else self.when_empty)


METRICS: tuple[Metric, ...] = (
    Metric("oIoU", _counts, _unions, 1.0, "overall IoU: the sum of intersections over the sum "
           "of unions", interval=True),
    Metric("mIoU", iou, _ones, float("nan"), "mean of the per-sample IoU", interval=True),
    *(Metric(f"P@{k}", partial(_at_least, k), _ones, float("nan"),
             f"share of samples with IoU >= {k}") for k in PRECISION_AT),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
INTERVAL_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.interval)
SEMANTIC_MIOU = "semantic_mIoU"  # dataset-level, from summed confusion matrices (not a ratio of sums)


def metric(name: str) -> Metric:
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(name)


def summarize(inter: np.ndarray, union: np.ndarray, empty: float = 1.0) -> dict[str, float]:
    """Every metric over samples at one threshold (1-D arrays of per-sample counts)."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    n = len(inter)
    if n == 0:
        return {"n": 0, **{m.name: float("nan") for m in METRICS}}
    return {"n": n, **{m.name: m.value(inter, union, empty) for m in METRICS}}


def summarize_sweep(inter: np.ndarray, union: np.ndarray, thresholds: tuple[float, ...] | list[float],
                    empty: float = 1.0) -> list[dict[str, float]]:
    """``summarize`` at every threshold; ``inter``/``union`` are (N, T)."""
    return [{"threshold": float(th), **summarize(inter[:, k], union[:, k], empty)}
            for k, th in enumerate(thresholds)]


def ratio_parts(inter: np.ndarray, union: np.ndarray, names: tuple[str, ...] = INTERVAL_METRICS,
                empty: float = 1.0) -> np.ndarray:
    """Per-sample numerators and denominators of the named metrics, (N, 2 * len(names)): the
    columns a cluster bootstrap sums."""
    columns = []
    for name in names:
        m = metric(name)
        columns += [m.numerator(inter, union, empty), m.denominator(inter, union, empty)]
    return np.stack(columns, axis=1) if columns else np.zeros((len(inter), 0))


# -- semantic segmentation: confusion matrices -----------------------------------------------
def confusion_miou(confusion: np.ndarray) -> dict[str, float]:
    """Dataset-level mean IoU from a (C, C) confusion matrix (rows truth, columns prediction),
    over classes seen in truth or prediction (classes with an empty union are left out, as
    mmsegmentation does)."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    seen = union > 0
    per_class = np.where(seen, tp / np.where(seen, union, 1), np.nan)
    return {"mIoU": float(np.nanmean(per_class)) if seen.any() else float("nan"),
            "classes": int(seen.sum()),
            "pixel_acc": float(tp.sum() / confusion.sum()) if confusion.sum() else float("nan")}
