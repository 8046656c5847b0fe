"""Metrics against hand-computed values and against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refbench.data.masks import encode
from refbench.results.metrics import confusion_miou, iou, summarize
from refbench.results.scoring import (DEFAULT_THRESHOLDS, image_confusion, score_map_stats,
                                      sweep_thresholds)


def test_default_sweep_is_clean_decimals():
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.95
    assert len(DEFAULT_THRESHOLDS) == 19 and 0.15 in DEFAULT_THRESHOLDS


def test_hand_computed_sample_stats():
    scores = np.array([[0.9, 0.6, 0.1],
                       [0.4, 0.0, 0.5]])
    gt = np.array([[1, 1, 0],
                   [1, 0, 0]], dtype=bool)
    stats = score_map_stats(scores, gt, thresholds=(0.5,))
    # pred at 0.5 = {0.9, 0.6, 0.5}; inter = {0.9, 0.6} -> I=2, P=3, G=3, U=4
    assert stats.inter.tolist() == [2] and stats.pred_area.tolist() == [3] and stats.gt_area == 3
    assert stats.union.tolist() == [4]
    assert stats.iou.tolist() == [0.5]


def test_sweep_equals_thresholding_each_time():
    rng = np.random.default_rng(0)
    scores = rng.random((37, 41)).astype(np.float32)
    scores[0, :5] = [0.05, 0.5, 0.95, 1.0, 0.0]  # values exactly on thresholds
    gt = rng.random((37, 41)) > 0.6
    stats = score_map_stats(scores, gt)
    for k, t in enumerate(DEFAULT_THRESHOLDS):
        pred = scores.astype(np.float64) >= t
        assert stats.inter[k] == (pred & gt).sum()
        assert stats.pred_area[k] == pred.sum()


def test_iou_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred = rng.random((30, 20)) > 0.5
        gt = rng.random((30, 20)) > 0.7
        stats = score_map_stats(pred.astype(np.float32), gt, thresholds=(0.5,))
        reference = mask_utils.iou([_rle(pred)], [_rle(gt)], [0])[0][0]
        assert stats.iou[0] == pytest.approx(reference, abs=1e-12)


def _rle(mask):
    rle = encode(mask)
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def test_both_empty_counts_as_one_and_empty_pred_as_zero():
    assert iou(np.array([0, 0]), np.array([0, 5])).tolist() == [1.0, 0.0]


def test_summarize_hand_computed():
    inter = np.array([8, 3, 0, 0])
    union = np.array([10, 5, 4, 0])
    out = summarize(inter, union)
    assert out["oIoU"] == pytest.approx(11 / 19)
    assert out["mIoU"] == pytest.approx((0.8 + 0.6 + 0.0 + 1.0) / 4)
    assert out["P@0.5"] == 0.75 and out["P@0.6"] == 0.75 and out["P@0.7"] == 0.5
    assert out["P@0.9"] == 0.25 and out["n"] == 4


def test_image_confusion_matches_naive():
    rng = np.random.default_rng(2)
    classes = [3, 7]
    labels = rng.choice([0, 3, 7, 255], size=(20, 25), p=[0.4, 0.25, 0.25, 0.1]).astype(np.uint8)
    maps = rng.random((2, 20, 25))
    thresholds = sweep_thresholds(0.1)
    confusion = image_confusion(maps, classes, labels, thresholds)
    lookup = {0: 0, 3: 1, 7: 2}
    for k, t in enumerate(thresholds):
        pred = np.where(maps.max(0) >= t, maps.argmax(0) + 1, 0)
        naive = np.zeros((3, 3), dtype=np.int64)
        for y in range(20):
            for x in range(25):
                if labels[y, x] != 255:
                    naive[lookup[int(labels[y, x])], pred[y, x]] += 1
        assert (confusion[k] == naive).all(), t


def test_confusion_miou_hand_computed():
    c = np.array([[5, 1, 0],
                  [2, 3, 0],
                  [0, 0, 0]])
    out = confusion_miou(c)
    # class 0: 5 / (5+1+2) ; class 1: 3 / (3+2+1); class 2 unseen
    assert out["mIoU"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert out["classes"] == 2
    assert out["pixel_acc"] == pytest.approx(8 / 11)
