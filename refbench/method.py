"""The method contract: what a method receives and what it must return.

A method sees images and expressions, never the dataset's name, never metrics, never files.
It returns, per sample, either a score map in [0, 1] or a binary mask at the image's size;
scoring happens elsewhere, identically for every method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from refbench.data.sample import Sample


def sample_seed(run_seed: int, sample_id: str) -> int:
    """A 63-bit seed derived from the run seed and the sample id.

    Randomness keyed by sample (not by position in a batch or process rank) is what makes
    results independent of batch size, order and the number of processes.
    """
    digest = hashlib.sha256(f"{run_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Batch:
    """Samples with their decoded RGB images (H x W x 3, uint8) and per-sample seeds.

    ``size``, when set, is the side of the square the evaluation protocol scores at (VPD's
    protocol: 512): a method may return its maps at that size directly (``output_size``), as the
    original code would; maps at the image's size are resized by the scorer either way.

    ``background`` is the open-vocabulary protocol of semantic data: True where background is a
    class (VOC21, Context60: a pixel whose best class score is under the threshold is
    background), False where it is ignored and every pixel takes a class (VOC20, PC59, ADE20K);
    None for referring data or when unknown. Some originals prompt differently under the two
    (Seg4Diff adds a "background" word only to the class lists that have the class); a method
    may read it, and must not need it.
    """

    samples: list[Sample]
    images: list[np.ndarray]
    seeds: list[int]
    size: int | None = None
    background: bool | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def output_size(self, sample: Sample) -> tuple[int, int]:
        """(H, W) a prediction for ``sample`` is expected at."""
        return (self.size, self.size) if self.size else (sample.height, sample.width)

    def rngs(self) -> list[np.random.Generator]:
        """One NumPy generator per sample, seeded from its sample seed."""
        return [np.random.default_rng(s) for s in self.seeds]


@dataclass
class Prediction:
    """One sample's output: exactly one of ``scores`` (float in [0,1]) or ``mask`` (bool).

    ``info`` carries per-sample facts worth counting (for example a fallback taken); it is
    stored with the sample's row.
    """

    scores: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.mask is None):
            raise ValueError("a Prediction holds exactly one of scores or mask")

    @property
    def is_score_map(self) -> bool:
        return self.scores is not None


@runtime_checkable
class Method(Protocol):
    """What a method factory returns.

    The factory (a registered ``MethodSpec``'s class) is called as ``factory(config)``, or as
    ``factory(config, host=host)`` when it takes a ``host`` keyword: the caller's plugin host, the
    one to load backbones and ask caption providers through. Any object with ``predict`` can
    also be evaluated directly (``refbench.evaluate([obj], ...)``) without being registered.
    """

    def predict(self, batch: Batch) -> list[Prediction]:
        """Predict one output per sample, in order. A method whose class sets
        ``reads_pixels = False`` gets 0 x 0 images (nothing is decoded for it)."""
        ...


def weights_fingerprint(method: Any) -> str:
    """The method's weights hash if it declares one (trained checkpoints), else ''."""
    fn = getattr(method, "weights_fingerprint", None)
    fingerprint = str(fn()) if callable(fn) else ""
    # a backbone run in half precision gives other maps than fp32: keep their rows apart
    # (``dtype=auto`` resolves to fp16 on CUDA); fp32 keys stay as they were
    dtype = getattr(getattr(method, "backbone", None), "dtype", None)
    if dtype is not None and str(dtype) != "torch.float32":
        fingerprint += f"@{str(dtype).removeprefix('torch.')}"
    return fingerprint


def at_reporting_threshold(scores: np.ndarray, threshold: float, reported: float = 0.5) -> np.ndarray:
    """Scores in [0, 1] remapped so that a method's own fixed threshold lands on ``reported``.

    Some originals decide foreground by a rule of their own (iSeg: background where
    (1 - max)^2 >= max, i.e. max <= (3 - sqrt 5) / 2). The harness reports every score map at one
    threshold of its sweep (0.5 when nothing is calibrated), so such a method hands over its maps
    through this map: piecewise linear, increasing, 0 -> 0, ``threshold`` -> ``reported``, 1 -> 1.
    It keeps the per-pixel order of scores that differ by more than a float32 step or two (the
    upper piece compresses [threshold, 1]: maps within about 1e-7 of each other can tie or swap,
    which moved up to 1% of an image's pixels in iSeg on shapes with SD 2.1's settings), so at
    ``reported`` the masks and label maps are the original's up to such near-ties, and a
    calibrated threshold still sweeps the same family of masks. A score exactly at ``threshold`` lands on ``reported`` and counts as
    foreground (the scorer's rule is score >= threshold)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    scores = np.asarray(scores, dtype=np.float32)
    low = scores * np.float32(reported / threshold)
    high = np.float32(reported) + (scores - np.float32(threshold)) * np.float32((1 - reported) / (1 - threshold))
    return np.clip(np.where(scores < threshold, low, high), 0.0, 1.0).astype(np.float32)
