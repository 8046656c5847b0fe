"""``centre_box``: a box centred in the image covering ``fraction`` of each side. A stand-in for
your method: it shows the plugin contract (a hook that lists MethodSpecs, a typed Config with
``validate``, ``predict`` returning one Prediction per sample) and gives a regression check
figures that move when its behaviour does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import refbench
from refbench.method import Batch, Prediction


@refbench.hookimpl
def refbench_methods():
    return [refbench.MethodSpec("centre_box", "rb_centre.plugin:CentreBox",
                                "a centred box (a sample plugin)", source="rb-centre sample plugin")]


class CentreBox:
    reads_pixels = False  # only the image's size

    @dataclass(frozen=True)
    class Config:
        fraction: float = 0.5

        def validate(self) -> None:
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def __init__(self, config: Config):
        self.config = config

    def predict(self, batch: Batch) -> list[Prediction]:
        out = []
        for sample in batch.samples:
            h, w = sample.height, sample.width
            bh, bw = round(h * self.config.fraction), round(w * self.config.fraction)
            mask = np.zeros((h, w), dtype=bool, order="F")
            mask[(h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = True
            out.append(Prediction(mask=mask))
        return out
