"""Test-only methods, registered through REFBENCH_PLUGINS (never installed)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import refbench
from refbench.method import Batch, Prediction


@refbench.hookimpl
def refbench_methods():
    return [
        refbench.MethodSpec("noise_blobs", "rb_testplugin:NoiseBlobs", "random smooth score maps"),
        refbench.MethodSpec("wrong_shape", "rb_testplugin:WrongShape", "returns a bad shape"),
    ]


class NoiseBlobs:
    """Score maps drawn from each sample's own generator; optionally slow (for kill tests)."""

    @dataclass(frozen=True)
    class Config:
        delay: float = 0.0
        cells: int = 6

    def __init__(self, config: Config):
        self.config = config

    def predict(self, batch: Batch) -> list[Prediction]:
        out = []
        for sample, rng in zip(batch.samples, batch.rngs()):
            coarse = rng.random((self.config.cells, self.config.cells))
            ys = np.minimum(np.arange(sample.height) * self.config.cells // sample.height, self.config.cells - 1)
            xs = np.minimum(np.arange(sample.width) * self.config.cells // sample.width, self.config.cells - 1)
            out.append(Prediction(scores=coarse[ys][:, xs], info={"calls": 1}))
            time.sleep(self.config.delay)
        return out


class WrongShape:
    Config = None

    def __init__(self, config=None):
        pass

    def predict(self, batch: Batch) -> list[Prediction]:
        return [Prediction(mask=np.zeros((3, 3), dtype=bool)) for _ in batch.samples]
