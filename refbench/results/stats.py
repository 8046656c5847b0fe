"""Uncertainty of reported figures: bootstrap intervals and a paired test, resampling images.

Referring data sets describe one object with several sentences and one image with several
objects, so the sentences of an image are not independent draws: resampling sentences would
treat them as if they were and give intervals that are too narrow. Every resampling unit here is
therefore a *cluster* (the image id): a bootstrap replicate draws images with replacement and
keeps all of each drawn image's sentences; the paired test flips the sign of each image's summed
difference as a whole.

Everything is vectorised: per-cluster sums are computed once, and each replicate is a row of
cluster weights, so a replicate costs one row of a matrix product over clusters, not a pass over
samples. Replicates are drawn in chunks to bound memory. All draws come from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from refbench.errors import UserError

from refbench.results.metrics import INTERVAL_METRICS, metric, ratio_parts

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
_CHUNK_CELLS = 1 << 22  # weights per chunk (replicates x clusters): about 32 MB as float64


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PairedResult:
    """Method A against method B on the same samples (A minus B)."""

    diff: float  # observed mIoU(A) - mIoU(B)
    interval: Interval  # paired bootstrap interval of the difference
    p_value: float  # two-sided sign-flip permutation test of "no difference"
    wins: int  # samples where A's IoU is higher
    ties: int
    losses: int
    n: int
    clusters: int
    resamples: int


def cluster_sums(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Sum the rows of ``values`` (N, K) within each cluster: (C, K), clusters in sorted order."""
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    values = np.asarray(values, dtype=np.float64).reshape(len(inverse), -1)
    sums = np.zeros((int(inverse.max()) + 1 if len(inverse) else 0, values.shape[1]))
    for k in range(values.shape[1]):
        sums[:, k] = np.bincount(inverse, weights=values[:, k], minlength=len(sums))
    return sums


def _chunks(resamples: int, n: int) -> Iterator[int]:
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples, per_chunk):
        yield min(per_chunk, resamples - start)


def bootstrap_weights(rng: np.random.Generator, n: int, resamples: int) -> Iterator[np.ndarray]:
    """Chunks of (replicates, n) multiplicities: row r says how often replicate r drew each
    cluster (n draws with replacement, so every row sums to n)."""
    for size in _chunks(resamples, n):
        draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class StatsOptions:
    """How intervals and paired tests are computed (a spec's ``statistics:``)."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0

    def check(self, where: str = "statistics") -> None:
        """Values a bootstrap can run with in bounded memory and time."""
        if not (isinstance(self.resamples, int) and MIN_RESAMPLES <= self.resamples <= MAX_RESAMPLES):
            raise UserError(f"{where}: resamples must be a whole number from {MIN_RESAMPLES} to "
                            f"{MAX_RESAMPLES:,}, got {self.resamples!r}")
        if not (isinstance(self.confidence, float) and 0.5 <= self.confidence < 1):
            raise UserError(f"{where}: confidence must be in [0.5, 1), got {self.confidence!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise UserError(f"{where}: seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")


MIN_RESAMPLES, MAX_RESAMPLES = 100, 1_000_000  # the upper bound keeps the weights in memory


def bootstrap_ci(inter: np.ndarray, union: np.ndarray, clusters: np.ndarray,
                 resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = 0, names: tuple[str, ...] = INTERVAL_METRICS,
                 empty: float = 1.0) -> dict[str, Interval]:
    """Percentile bootstrap intervals of the named metrics, resampling clusters (images).

    ``inter`` and ``union`` are per-sample counts at one threshold; ``clusters`` the image id of
    each sample. Every metric is a ratio of per-sample sums (``metrics``), so a replicate's value
    is its drawn clusters' summed numerator over their summed denominator: oIoU is the drawn
    images' ΣI/ΣU, mIoU the mean IoU over their sentences (an image drawn twice counts twice),
    exactly as the metrics define them.
    """
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    if len(inter) == 0:
        nan = Interval(float("nan"), float("nan"), float("nan"))
        return {name: nan for name in names}
    sums = cluster_sums(ratio_parts(inter, union, names, empty), clusters)
    rng = np.random.default_rng(seed)
    totals = np.concatenate([weights @ sums for weights in bootstrap_weights(rng, len(sums), resamples)])
    whole = sums.sum(0)
    out = {}
    for j, name in enumerate(names):
        num, den, empty = totals[:, 2 * j], totals[:, 2 * j + 1], metric(name).when_empty
        replicates = np.divide(num, den, out=np.full(len(totals), empty), where=den > 0)
        estimate = float(whole[2 * j] / whole[2 * j + 1]) if whole[2 * j + 1] > 0 else empty
        out[name] = Interval(estimate, *_percentiles(replicates, confidence))
    return out


def win_tie_loss(iou_a: np.ndarray, iou_b: np.ndarray, tolerance: float = 1e-9) -> tuple[int, int, int]:
    """Per-sample counts of A better, equal (|A - B| <= tolerance) and worse than B."""
    diff = np.asarray(iou_a, dtype=np.float64) - np.asarray(iou_b, dtype=np.float64)
    ties = np.abs(diff) <= tolerance
    return int((diff > tolerance).sum()), int(ties.sum()), int((diff < -tolerance).sum())


def paired_test(iou_a: np.ndarray, iou_b: np.ndarray, clusters: np.ndarray,
                resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                seed: int = 0) -> PairedResult:
    """Is A's mIoU different from B's on the same samples? (per-sample IoUs, aligned).

    The p-value comes from a sign-flip permutation test on images: under "no difference" the
    labels A and B are exchangeable within an image, so the sign of each image's summed
    difference is a fair coin. The statistic is the mean per-sentence difference (the mIoU
    difference), p = (1 + #{|T*| >= |T|}) / (1 + resamples), which is valid at any sample size;
    with so few images that all 2^images sign patterns fit in ``resamples``, all are enumerated
    and p is exact (it cannot go below 2 / 2^images: three images can never give p < 0.25).
    The interval is a paired bootstrap over images of the same difference.
    """
    iou_a = np.asarray(iou_a, dtype=np.float64)
    iou_b = np.asarray(iou_b, dtype=np.float64)
    if iou_a.shape != iou_b.shape or len(iou_a) != len(clusters):
        raise ValueError("iou_a, iou_b and clusters must be aligned, one entry per sample")
    n = len(iou_a)
    wins, ties, losses = win_tie_loss(iou_a, iou_b)
    if n == 0:
        nan = float("nan")
        return PairedResult(nan, Interval(nan, nan, nan), nan, 0, 0, 0, 0, 0, resamples)
    sums = cluster_sums(np.stack([iou_a - iou_b, np.ones(n)], 1), clusters)
    per_image, counts = sums[:, 0], sums[:, 1]
    observed = float(per_image.sum() / n)
    rng = np.random.default_rng(seed)

    k = len(per_image)
    if 2**k <= resamples:  # few images: every sign pattern, an exact p-value
        signs = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2.0 - 1.0
        flipped = np.abs(signs @ per_image) / n
        p_value = float((flipped >= abs(observed) - 1e-12).mean())
    else:
        extreme = 0
        for size in _chunks(resamples, k):
            signs = rng.integers(0, 2, size=(size, k)) * 2.0 - 1.0
            flipped = np.abs(signs @ per_image) / n
            extreme += int((flipped >= abs(observed) - 1e-12).sum())
        p_value = (1 + extreme) / (1 + resamples)

    parts = [weights @ sums for weights in bootstrap_weights(rng, len(sums), resamples)]
    totals = np.concatenate(parts)
    low, high = _percentiles(totals[:, 0] / totals[:, 1], confidence)
    return PairedResult(observed, Interval(observed, low, high), float(p_value), wins, ties,
                        losses, n, len(counts), resamples)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment for a family of tests: with the p-values sorted ascending,
    the i-th (from 0) becomes max over j <= i of min(1, (m - j) p_(j)). Rejecting where the
    adjusted value is below alpha controls the family-wise error rate at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
