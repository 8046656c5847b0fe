"""Statistics: intervals cover the truth at the nominal rate, the paired test is calibrated."""

from __future__ import annotations

import time

import numpy as np
import pytest

from refbench.results.metrics import summarize
from refbench.results.stats import bootstrap_ci, cluster_sums, paired_test, win_tie_loss

# Synthetic referring data with a strong image effect: per image a quality q ~ U(0.2, 0.8) and
# 1-4 sentences; a sentence's IoU is q + U(-0.15, 0.15), its union 1000 q (bigger objects are
# easier). So the truth is mIoU = E[q] = 0.5 and oIoU = E[q^2] / E[q] = 0.28 / 0.5 = 0.56, and
# sentences of one image are strongly correlated (intra-image correlation 0.8).
TRUE_MIOU, TRUE_OIOU = 0.5, 0.56


def _synthetic(rng: np.random.Generator, n_images: int):
    q = rng.uniform(0.2, 0.8, n_images)
    per_image = rng.integers(1, 5, n_images)
    image = np.repeat(np.arange(n_images), per_image)
    ious = q[image] + rng.uniform(-0.15, 0.15, len(image))
    union = 1000 * q[image]
    return ious * union, union, image


def _coverage(trials: int, n_images: int, naive: bool) -> tuple[float, float]:
    rng = np.random.default_rng(123)
    hits = np.zeros(2)
    for trial in range(trials):
        inter, union, image = _synthetic(rng, n_images)
        clusters = np.arange(len(image)) if naive else image
        ci = bootstrap_ci(inter, union, clusters, resamples=1000, seed=trial)
        hits += [ci["mIoU"].low <= TRUE_MIOU <= ci["mIoU"].high,
                 ci["oIoU"].low <= TRUE_OIOU <= ci["oIoU"].high]
    return tuple(hits / trials)


def test_image_bootstrap_covers_the_truth_at_about_95_percent():
    miou_rate, oiou_rate = _coverage(trials=200, n_images=150, naive=False)
    assert 0.90 <= miou_rate <= 0.99, miou_rate
    assert 0.90 <= oiou_rate <= 0.99, oiou_rate


def test_resampling_sentences_instead_of_images_undercovers():
    # The reason clusters exist: treating correlated sentences as independent is overconfident.
    miou_rate, _ = _coverage(trials=100, n_images=150, naive=True)
    assert miou_rate < 0.85, miou_rate


def test_interval_width_matches_the_clustered_standard_error():
    rng = np.random.default_rng(7)
    inter, union, image = _synthetic(rng, 400)
    ci = bootstrap_ci(inter, union, image, resamples=4000, seed=1)
    ious = inter / union
    # linearised standard error of a ratio of cluster sums (independent of the bootstrap)
    m = ious.mean()
    residual = np.bincount(image, weights=ious - m)
    se = np.sqrt((residual**2).sum()) / len(ious)
    half_width = (ci["mIoU"].high - ci["mIoU"].low) / 2
    assert half_width == pytest.approx(1.96 * se, rel=0.12)


def test_point_estimates_are_the_metrics_and_one_cluster_has_no_spread():
    inter = np.array([8.0, 3.0, 0.0, 0.0])
    union = np.array([10.0, 5.0, 4.0, 0.0])
    ci = bootstrap_ci(inter, union, np.array([1, 1, 2, 3]), resamples=200)
    reference = summarize(inter, union)
    assert ci["oIoU"].estimate == pytest.approx(reference["oIoU"])
    assert ci["mIoU"].estimate == pytest.approx(reference["mIoU"])
    single = bootstrap_ci(inter, union, np.zeros(4), resamples=50)
    assert single["mIoU"].low == single["mIoU"].high == pytest.approx(reference["mIoU"])
    again = bootstrap_ci(inter, union, np.array([1, 1, 2, 3]), resamples=200)
    assert again == ci  # seeded


def test_cluster_sums_by_hand():
    sums = cluster_sums(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([9, 4, 9]))
    assert sums.tolist() == [[3.0, 4.0], [6.0, 8.0]]  # clusters 4, then 9


def test_win_tie_loss_by_hand():
    a = np.array([0.5, 0.2, 0.7, 0.0, 1.0])
    b = np.array([0.4, 0.2, 0.9, 0.0, 0.5])
    assert win_tie_loss(a, b) == (2, 2, 1)
    result = paired_test(a, b, np.arange(5), resamples=100)
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.diff == pytest.approx(a.mean() - b.mean())


def test_few_images_get_the_exact_sign_flip_p_value():
    a, b = np.array([0.9, 0.8, 0.7, 0.95]), np.array([0.1, 0.2, 0.3, 0.1])
    clusters = np.array([1, 1, 2, 3])  # per-image differences 1.4, 0.4, 0.85: all positive
    assert paired_test(a, b, clusters, resamples=1000).p_value == 2 / 8  # all +, all - of 8
    # one image the other way: patterns at least as extreme are found by enumeration
    b2 = b.copy()
    b2[3] = 1.0  # image 3's difference becomes -0.05
    d = np.array([1.4, 0.4, -0.05])
    flips = np.array([[s0, s1, s2] for s0 in (-1, 1) for s1 in (-1, 1) for s2 in (-1, 1)])
    exact = np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12)
    assert paired_test(a, b2, clusters, resamples=1000).p_value == pytest.approx(exact)


def _null_pair(rng: np.random.Generator, n_images: int):
    # Two exchangeable methods: each has its own per-image effect (shared by that image's
    # sentences) and per-sentence noise, so differences are correlated within an image.
    q = rng.uniform(0.2, 0.8, n_images)
    image = np.repeat(np.arange(n_images), rng.integers(1, 5, n_images))
    a = q[image] + rng.normal(0, 0.08, n_images)[image] + rng.normal(0, 0.05, len(image))
    b = q[image] + rng.normal(0, 0.08, n_images)[image] + rng.normal(0, 0.05, len(image))
    return a, b, image


def test_paired_test_is_calibrated_under_the_null():
    rng = np.random.default_rng(11)
    p_values = np.array([paired_test(*_null_pair(rng, 60), resamples=500, seed=t).p_value
                         for t in range(400)])
    assert 0.02 <= (p_values <= 0.05).mean() <= 0.10
    assert 0.40 <= (p_values <= 0.5).mean() <= 0.60  # roughly uniform, not just in the tail


def test_paired_test_finds_a_real_difference():
    rng = np.random.default_rng(5)
    a, b, image = _null_pair(rng, 300)
    result = paired_test(a + 0.05, b, image, resamples=2000, seed=0)
    assert result.p_value < 0.001
    assert result.interval.low < 0.05 < result.interval.high and result.interval.low > 0
    assert result.clusters == 300 and result.n == len(a) and result.wins > result.losses


def test_bootstrap_is_fast_on_100k_samples():
    rng = np.random.default_rng(0)
    image = np.sort(rng.integers(0, 40_000, 100_000))
    union = rng.integers(100, 1000, len(image)).astype(float)
    inter = np.floor(union * rng.random(len(image)))
    start = time.perf_counter()
    bootstrap_ci(inter, union, image, resamples=2000)
    assert time.perf_counter() - start < 20  # about 1 s on a 2-core CI machine


def test_holm_adjustment_against_hand_computed_values():
    from refbench.results.stats import holm

    # sorted p: 0.01, 0.02, 0.03, 0.5 -> 4*0.01, max(., 3*0.02), max(., 2*0.03), max(., 1*0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # capped by the running maximum
    assert holm([0.9, 0.9, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # and by 1
    assert holm([]) == []
