"""Per-sample scoring: a batch's predictions become counts rows (and per-image confusions).

This is the only place where a prediction meets its ground truth, so every method is scored by
the same code, over the same threshold sweep, under one protocol: refbench's (at the image's own
resolution; both empty counts as IoU 1) or VPD's (everything squashed to S x S, 512 for SD 1.5:
the ground truth resized with nearest, a prediction at the image's size resized bilinearly, a
mask with nearest; both empty counts as IoU 0). A score map's pixel is predicted at threshold t
when ``score >= t``; one pass over the pixels gives the counts at every threshold. A binary mask
scores the same at every threshold, so it is counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

import numpy as np

from refbench.data.masks import area, decode, encode, intersection_area
from refbench.data.sample import Dataset, Sample
from refbench.errors import UserError
from refbench.method import Prediction
from refbench.results.metrics import iou
from refbench.store import GroupRow, SampleRow

MASK_THRESHOLD = 0.5  # the threshold at which a score map's mask is stored
PROTOCOLS = ("image", "vpd")


@dataclass(frozen=True)
class Protocol:
    """Where and how IoU is taken: ``image`` (refbench's default) or ``vpd`` (VPD's test.py)."""

    name: Literal["image", "vpd"] = "image"
    size: int = 512  # vpd: the square everything is squashed to

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise UserError(f"unknown protocol {self.name!r}: use image (the image's own "
                            f"resolution) or vpd (VPD's: squashed to --protocol-size)")
        if self.size < 8:
            raise UserError(f"protocol size must be at least 8, got {self.size}")

    @property
    def empty_iou(self) -> float:
        return 0.0 if self.name == "vpd" else 1.0

    @property
    def output_size(self) -> int | None:
        """The side methods are asked to predict at (None: the image's own size)."""
        return self.size if self.name == "vpd" else None

    def key(self) -> Any:
        """What a run key adds for this protocol (nothing for the default, so keys stay)."""
        return None if self.name == "image" else {"protocol": self.name, "size": self.size}

    def describe(self) -> str:
        if self.name == "image":
            return "image: IoU at each image's own resolution; both empty counts as 1"
        return (f"vpd: image and ground truth squashed to {self.size}x{self.size} (the truth with "
                f"nearest), IoU there; both empty counts as 0 (VPD's test.py)")

    def squash(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        """An H x W map at ``size`` x ``size``: nearest (PIL's rule) or bilinear."""
        return resize_map(array, (self.size, self.size), nearest)


def resize_map(array: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """A mask (``nearest``, PIL's rule: a bool mask back) or a score map (bilinear, kept in
    [0, 1]) at ``shape``: where the VPD protocol squashes, and where pages show a map scored on
    a square at its image's size."""
    import torch
    import torch.nn.functional as F

    if array.shape == shape:
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if nearest:
        return F.interpolate(x, size=shape, mode="nearest-exact")[0, 0].numpy() > 0.5
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy().clip(0, 1)


DEFAULT_PROTOCOL = Protocol()


def sweep_thresholds(step: float = 0.05) -> tuple[float, ...]:
    """Thresholds step, 2*step, ... below 1 (default 0.05 .. 0.95), rounded to clean decimals."""
    if not 0 < step < 1:
        raise ValueError(f"sweep step must be in (0, 1), got {step}")
    count = int(round(1 / step))
    values = [round(k * step, 6) for k in range(1, count + 1)]
    return tuple(v for v in values if v < 1.0) or (step,)


DEFAULT_THRESHOLDS = sweep_thresholds(0.05)


def threshold_index(thresholds: Sequence[float], value: float) -> int:
    """Index of ``value`` in the sweep (to 1e-9)."""
    for k, t in enumerate(thresholds):
        if abs(t - value) < 1e-9:
            return k
    raise ValueError(f"threshold {value} is not in the sweep {list(thresholds)}")


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


def _threshold_bins(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """For each pixel, how many thresholds it reaches (score >= t)."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64),
                           scores.astype(np.float64, copy=False).ravel(), side="right")


def score_map_stats(scores: np.ndarray, gt: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> SampleStats:
    """Stats of a score map at every threshold, in one pass over the pixels."""
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


def mask_stats(mask: np.ndarray, gt: np.ndarray, thresholds: Sequence[float]) -> SampleStats:
    """Stats of a binary mask: the same at every threshold, so counted once."""
    if mask.shape != gt.shape:
        raise ValueError(f"prediction shape {mask.shape} differs from ground truth {gt.shape}")
    t = len(thresholds)
    inter = np.full(t, np.count_nonzero(mask & gt), dtype=np.int64)
    pred = np.full(t, np.count_nonzero(mask), dtype=np.int64)
    return SampleStats(inter=inter, pred_area=pred, gt_area=int(np.count_nonzero(gt)))


def rle_mask_stats(mask_rle: dict[str, Any], gt_rle: dict[str, Any],
                   thresholds: Sequence[float]) -> SampleStats:
    """``mask_stats`` of a mask and a truth given as RLE: the same counts, taken on runs."""
    t = len(thresholds)
    inter = np.full(t, intersection_area(mask_rle, gt_rle), dtype=np.int64)
    pred = np.full(t, area(mask_rle), dtype=np.int64)
    return SampleStats(inter=inter, pred_area=pred, gt_area=area(gt_rle))


def prediction_map(prediction: Prediction, sample: Sample, method: str,
                   size: int | None = None) -> np.ndarray:
    """The prediction validated: float32 scores in [0, 1], or a bool mask, at the image's size
    (or at ``size`` x ``size``, the protocol's, when it was asked for that)."""
    where = f"method {method!r} on sample {sample.sample_id}"
    if not isinstance(prediction, Prediction):
        raise UserError(f"{where} returned {type(prediction).__name__}, not a refbench Prediction")
    array = np.asarray(prediction.scores if prediction.is_score_map else prediction.mask)
    allowed = {(sample.height, sample.width)} | ({(size, size)} if size else set())
    if array.shape not in allowed:
        raise UserError(f"{where} returned a map of shape {array.shape}; the image is "
                        f"{sample.height}x{sample.width} (H x W): resize the output to the image")
    if not prediction.is_score_map:
        return array.astype(bool, copy=False)
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise UserError(f"{where} returned scores outside [0, 1] (or NaN): normalise them")
    return array


def as_scores(prediction_array: np.ndarray) -> np.ndarray:
    """A validated prediction (score map or mask) as a float map (a mask is 0 or 1)."""
    return prediction_array.astype(np.float32, copy=False)


def score_batch(samples: Sequence[Sample], predictions: Sequence[Prediction], method: str,
                thresholds: Sequence[float], dataset: Dataset | None = None,
                protocol: Protocol = DEFAULT_PROTOCOL) -> tuple[list[SampleRow], list[GroupRow]]:
    """Rows for a batch; for semantic data also one confusion per image (whole groups only)."""
    if len(predictions) != len(samples):
        raise UserError(f"method {method!r} returned {len(predictions)} predictions for "
                        f"{len(samples)} samples")
    maps = [prediction_map(p, s, method, protocol.output_size) for p, s in zip(predictions, samples)]
    if protocol.output_size:
        maps = [protocol.squash(m, nearest=m.dtype == bool) for m in maps]
    rows = []
    for sample, prediction, array in zip(samples, predictions, maps):
        is_mask = array.dtype == bool
        mask_rle = encode(array if is_mask else array >= MASK_THRESHOLD)
        if is_mask and not protocol.output_size:  # the stored RLE against the truth's: no pixels
            stats = rle_mask_stats(mask_rle, dict(sample.gt), thresholds)
        else:
            gt = decode(sample.gt)
            if protocol.output_size:
                gt = protocol.squash(gt, nearest=True)
            stats = mask_stats(array, gt, thresholds) if is_mask else score_map_stats(array, gt, thresholds)
        rows.append(SampleRow(
            sample_id=sample.sample_id, image_id=sample.image_id, group_id=sample.group,
            inter=stats.inter, pred_area=stats.pred_area, gt_area=stats.gt_area,
            is_mask=is_mask, mask_rle=mask_rle, meta=dict(sample.meta), info=dict(prediction.info)))
    groups: list[GroupRow] = []
    if dataset is not None and dataset.task == "semantic":
        indexed = list(zip(samples, maps))
        for group_id, members in groupby(indexed, key=lambda pair: pair[0].group):
            members = list(members)
            classes = [int(s.meta["category_id"]) for s, _ in members]
            labels = dataset.label_map(members[0][0].image_id)
            confusion = image_confusion(np.stack([as_scores(m) for _, m in members]), classes,
                                        labels, thresholds,
                                        background=getattr(dataset, "background", True))
            groups.append(GroupRow(group_id, classes, confusion))
    return rows, groups


def image_confusion(score_maps: np.ndarray, class_ids: Sequence[int], labels: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    ignore: int = 255, background: bool = True) -> np.ndarray:
    """Per-threshold confusion of one image, (T, K+1, K+1), rows = truth, cols = prediction.

    ``score_maps`` is (K, H, W), one map per class in ``class_ids``; index 0 of the confusion is
    background. A pixel takes the class of its highest score, or background where that score is
    below the threshold. Pixels labelled ``ignore`` are not counted. Without ``background`` (the
    VOC20 / PC59 protocol: the reader has already turned background pixels into ``ignore``) no
    pixel is predicted background: every threshold gives the argmax, and the background row and
    column stay empty, so the class mean leaves background out.
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
    bins = (_threshold_bins(np.max(score_maps, axis=0)[valid], thresholds) if background
            else np.full(winner.shape, t, dtype=np.int64))
    hist = np.bincount((gt_local[valid] * k + winner) * (t + 1) + bins,
                       minlength=(k + 1) * k * (t + 1)).reshape(k + 1, k, t + 1)
    reached = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (K+1, K, T): bins > k
    below = hist.sum(axis=(1, 2))[:, None] - reached.sum(axis=1)  # (K+1, T)
    confusion = np.zeros((t, k + 1, k + 1), dtype=np.int64)
    confusion[:, :, 1:] = reached.transpose(2, 0, 1)
    confusion[:, :, 0] = below.T
    return confusion
