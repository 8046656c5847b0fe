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
    """

    samples: list[Sample]
    images: list[np.ndarray]
    seeds: list[int]
    size: int | None = None

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
    return str(fn()) if callable(fn) else ""
