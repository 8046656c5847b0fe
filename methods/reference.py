"""Reference methods that need no model: a floor and a ceiling for every data set.

``full_image`` predicts the whole image: the score any method must beat to be doing anything.
``gt_box`` fills the ground truth's bounding box: what a perfect box detector would score, so
the gap to 100 is what pixel-accurate masks add over boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refbench import MethodSpec, hookimpl
from refbench.data.masks import bbox
from refbench.method import Batch, Prediction


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("full_image", "methods.reference:FullImage",
                   "predicts the whole image (the floor)", source="refbench reference method"),
        MethodSpec("gt_box", "methods.reference:GroundTruthBox",
                   "fills the ground-truth bounding box (the box-vs-mask ceiling; reads the answer)",
                   source="refbench reference method"),
    ]


class FullImage:
    """Every pixel is foreground."""

    Config = None
    reads_pixels = False  # only the image's size: the evaluation skips decoding for it

    def __init__(self, config: None = None):
        pass

    def predict(self, batch: Batch) -> list[Prediction]:
        # column-major, the order COCO's RLE encoder reads: stored without a transposed copy
        return [Prediction(mask=np.ones((s.height, s.width), dtype=bool, order="F"))
                for s in batch.samples]


class GroundTruthBox:
    """The tight box of the ground-truth mask, filled."""

    reads_pixels = False  # only the ground truth: the evaluation skips decoding for it

    @dataclass(frozen=True)
    class Config:
        grow: float = 0.0  # relative margin added on each side, to test looser boxes

        def validate(self) -> None:
            if not -0.5 < self.grow < 1.0:
                raise ValueError(f"grow must be in (-0.5, 1), got {self.grow}")

    def __init__(self, config: Config):
        self.config = config

    def predict(self, batch: Batch) -> list[Prediction]:
        out = []
        for sample in batch.samples:
            mask = np.zeros((sample.height, sample.width), dtype=bool, order="F")  # as FullImage
            x, y, w, h = bbox(sample.gt)
            if w > 0 and h > 0:
                gx, gy = self.config.grow * w, self.config.grow * h
                x0, y0 = max(0, math.floor(x - gx)), max(0, math.floor(y - gy))
                x1 = min(sample.width, math.ceil(x + w + gx))
                y1 = min(sample.height, math.ceil(y + h + gy))
                mask[y0:y1, x0:x1] = True
            out.append(Prediction(mask=mask))
        return out
