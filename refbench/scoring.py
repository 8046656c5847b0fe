"""Scoring: turn a batch's predictions into per-sample stats rows (and per-image confusions).

This is the only place where a prediction meets its ground truth, so every method is scored by
the same code, at the image's own resolution, over the same threshold sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import numpy as np

from refbench.data.masks import decode, encode
from refbench.data.sample import Dataset, Sample
from refbench.errors import UserError
from refbench.method import Prediction
from refbench.metrics import image_confusion, score_map_stats
from refbench.store import GroupRow, SampleRow

MASK_THRESHOLD = 0.5  # the threshold at which a score map's mask is stored


def prediction_map(prediction: Prediction, sample: Sample, method: str) -> np.ndarray:
    """The prediction as a float map at the image's size, validated."""
    where = f"method {method!r} on sample {sample.sample_id}"
    if not isinstance(prediction, Prediction):
        raise UserError(f"{where} returned {type(prediction).__name__}, not a refbench Prediction")
    array = prediction.scores if prediction.is_score_map else prediction.mask
    array = np.asarray(array)
    if array.shape != (sample.height, sample.width):
        raise UserError(f"{where} returned a map of shape {array.shape}; the image is "
                        f"{sample.height}x{sample.width} (H x W): resize the output to the image")
    if prediction.is_score_map:
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError(f"{where} returned scores outside [0, 1] (or NaN): normalise them")
        return array
    return array.astype(bool).astype(np.float32)


def score_batch(samples: Sequence[Sample], predictions: Sequence[Prediction], method: str,
                thresholds: Sequence[float], dataset: Dataset | None = None
                ) -> tuple[list[SampleRow], list[GroupRow]]:
    """Rows for a batch; for semantic data also one confusion per image (whole groups only)."""
    if len(predictions) != len(samples):
        raise UserError(f"method {method!r} returned {len(predictions)} predictions for "
                        f"{len(samples)} samples")
    maps = [prediction_map(p, s, method) for p, s in zip(predictions, samples)]
    rows = []
    for sample, prediction, score_map in zip(samples, predictions, maps):
        stats = score_map_stats(score_map, decode(sample.gt), thresholds)
        rows.append(SampleRow(
            sample_id=sample.sample_id, image_id=sample.image_id, group_id=sample.group,
            inter=stats.inter, pred_area=stats.pred_area, gt_area=stats.gt_area,
            is_mask=not prediction.is_score_map, mask_rle=encode(score_map >= MASK_THRESHOLD),
            meta=dict(sample.meta), info=dict(prediction.info)))
    groups: list[GroupRow] = []
    if dataset is not None and dataset.task == "semantic":
        indexed = list(zip(samples, maps))
        for group_id, members in groupby(indexed, key=lambda pair: pair[0].group):
            members = list(members)
            classes = [int(s.meta["category_id"]) for s, _ in members]
            labels = dataset.label_map(members[0][0].image_id)
            confusion = image_confusion(np.stack([m for _, m in members]), classes, labels, thresholds)
            groups.append(GroupRow(group_id, classes, confusion))
    return rows, groups
