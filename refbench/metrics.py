"""Metrics, defined once.

Per sample we keep counts, not masks (as mmengine's IoUMetric does): I = |pred & gt| and the
predicted area at every threshold of a sweep, plus the ground-truth area; U = P + G - I. All
dataset metrics are sums or means over those counts, so any threshold's metrics come from one
pass of the method. Both-empty (U = 0) counts as IoU 1: predicting nothing for an empty target
is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PRECISION_AT = (0.5, 0.6, 0.7, 0.8, 0.9)


def sweep_thresholds(step: float = 0.05) -> tuple[float, ...]:
    """Thresholds step, 2*step, ... below 1 (default 0.05 .. 0.95), rounded to clean decimals."""
    if not 0 < step < 1:
        raise ValueError(f"sweep step must be in (0, 1), got {step}")
    count = int(round(1 / step))
    values = [round(k * step, 6) for k in range(1, count + 1)]
    return tuple(v for v in values if v < 1.0) or (step,)


DEFAULT_THRESHOLDS = sweep_thresholds(0.05)


@dataclass(frozen=True)
class SampleStats:
    """Counts for one sample at each threshold of a sweep (pred = score >= threshold)."""

    inter: np.ndarray  # (T,) int64
    pred_area: np.ndarray  # (T,) int64
    gt_area: int

    @property
    def union(self) -> np.ndarray:
        return self.pred_area + self.gt_area - self.inter

    @property
    def iou(self) -> np.ndarray:
        return iou(self.inter, self.union)


def iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Elementwise I/U with the both-empty case (U = 0) counted as 1."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.ones_like(union)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _threshold_bins(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """For each pixel, how many thresholds it reaches (score >= t)."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64),
                           scores.astype(np.float64, copy=False).ravel(), side="right")


def score_map_stats(scores: np.ndarray, gt: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> SampleStats:
    """Stats of a score map (or a 0/1 mask) at every threshold, in one pass over the pixels."""
    if scores.shape != gt.shape:
        raise ValueError(f"prediction shape {scores.shape} differs from ground truth {gt.shape}")
    t = len(thresholds)
    bins = _threshold_bins(scores, thresholds)
    all_hist = np.bincount(bins, minlength=t + 1)
    gt_hist = np.bincount(bins[gt.ravel()], minlength=t + 1)
    # pixels reaching threshold k are those in bins k+1..T: reverse cumulative sums.
    pred_area = np.cumsum(all_hist[::-1])[::-1][1:].astype(np.int64)
    inter = np.cumsum(gt_hist[::-1])[::-1][1:].astype(np.int64)
    return SampleStats(inter=inter, pred_area=pred_area, gt_area=int(gt.sum()))


def summarize(inter: np.ndarray, union: np.ndarray) -> dict[str, float]:
    """oIoU, mIoU and P@k over samples for one threshold (1-D arrays of per-sample counts)."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    n = len(inter)
    if n == 0:
        return {"n": 0, "oIoU": float("nan"), "mIoU": float("nan"),
                **{f"P@{k}": float("nan") for k in PRECISION_AT}}
    ious = iou(inter, union)
    total_union = union.sum()
    return {
        "n": n,
        "oIoU": float(inter.sum() / total_union) if total_union > 0 else 1.0,
        "mIoU": float(ious.mean()),
        **{f"P@{k}": float((ious >= k).mean()) for k in PRECISION_AT},
    }


def summarize_sweep(inter: np.ndarray, union: np.ndarray,
                    thresholds: Sequence[float]) -> list[dict[str, float]]:
    """``summarize`` at every threshold; ``inter``/``union`` are (N, T)."""
    return [{"threshold": float(th), **summarize(inter[:, k], union[:, k])}
            for k, th in enumerate(thresholds)]


def threshold_index(thresholds: Sequence[float], value: float) -> int:
    """Index of ``value`` in the sweep (to 1e-9)."""
    for k, t in enumerate(thresholds):
        if abs(t - value) < 1e-9:
            return k
    raise ValueError(f"threshold {value} is not in the sweep {list(thresholds)}")


# -- semantic segmentation (COCO) ------------------------------------------------------------
def image_confusion(score_maps: np.ndarray, class_ids: Sequence[int], labels: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    ignore: int = 255) -> np.ndarray:
    """Per-threshold confusion of one image, (T, K+1, K+1), rows = truth, cols = prediction.

    ``score_maps`` is (K, H, W), one map per class in ``class_ids``; index 0 of the confusion is
    background. A pixel takes the class of its highest score, or background where that score is
    below the threshold. Pixels labelled ``ignore`` are not counted.
    """
    k = len(class_ids)
    lookup = {0: 0, **{int(c): i + 1 for i, c in enumerate(class_ids)}}
    valid = labels != ignore
    gt_local = np.zeros(labels.shape, dtype=np.int64)
    for value in np.unique(labels[valid]):
        if int(value) not in lookup:
            raise ValueError(f"label {int(value)} has no score map (classes: {list(class_ids)})")
        gt_local[labels == value] = lookup[int(value)]
    t = len(thresholds)
    winner = np.argmax(score_maps, axis=0)[valid]
    bins = _threshold_bins(np.max(score_maps, axis=0)[valid], thresholds)
    hist = np.bincount((gt_local[valid] * k + winner) * (t + 1) + bins,
                       minlength=(k + 1) * k * (t + 1)).reshape(k + 1, k, t + 1)
    reached = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (K+1, K, T): bins > k
    below = hist.sum(axis=(1, 2))[:, None] - reached.sum(axis=1)  # (K+1, T)
    confusion = np.zeros((t, k + 1, k + 1), dtype=np.int64)
    confusion[:, :, 1:] = reached.transpose(2, 0, 1)
    confusion[:, :, 0] = below.T
    return confusion


def confusion_miou(confusion: np.ndarray) -> dict[str, float]:
    """Dataset-level mean IoU from a (C, C) confusion matrix, over classes seen in truth or
    prediction (classes with an empty union are left out, as mmseg does)."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    seen = union > 0
    per_class = np.where(seen, tp / np.where(seen, union, 1), np.nan)
    return {"mIoU": float(np.nanmean(per_class)) if seen.any() else float("nan"),
            "classes": int(seen.sum()),
            "pixel_acc": float(tp.sum() / confusion.sum()) if confusion.sum() else float("nan")}
