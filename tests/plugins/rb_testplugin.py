"""Test-only methods, registered through REFBENCH_PLUGINS (never installed)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

import refbench
from refbench.method import Batch, Prediction


@refbench.hookimpl
def refbench_methods():
    return [
        refbench.MethodSpec("noise_blobs", "rb_testplugin:NoiseBlobs", "random smooth score maps"),
        refbench.MethodSpec("wrong_shape", "rb_testplugin:WrongShape", "returns a bad shape"),
        refbench.MethodSpec("shared_blobs", "rb_testplugin:SharedBlobs",
                            "colour evidence mixed with noise; its costly part is cached per sample"),
        refbench.MethodSpec("logged_blobs", "rb_testplugin:LoggedBlobs",
                            "noise_blobs that logs which process computed each sample"),
        refbench.MethodSpec("crashing", "rb_testplugin:Crashing", "a method with a bug"),
    ]


class Crashing:
    """Fails the way a bug does: not a user's mistake, so the catch-all line reports it."""

    Config = None

    def __init__(self, config: None = None):
        pass

    def predict(self, batch: Batch) -> list[Prediction]:
        return {}["no such key"]


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


# A stand-in for a diffusion method's per-(image, seed) work (latents, noise): costly, independent
# of the method's parameters, and kept in a small process-wide LRU keyed by content.
SHARED_CACHE_SIZE = 8
SHARED_CALLS: Counter = Counter()
_SHARED: OrderedDict = OrderedDict()


def shared_features(image: np.ndarray, seed: int, cost: int) -> tuple[np.ndarray, np.ndarray]:
    key = (hashlib.sha1(image.tobytes()).hexdigest(), seed, cost)
    if key in _SHARED:
        _SHARED.move_to_end(key)
        SHARED_CALLS["hits"] += 1
        return _SHARED[key]
    SHARED_CALLS["computed"] += 1
    colour = (image.max(axis=2).astype(np.float64) - image.min(axis=2)) / 255.0
    for _ in range(cost):  # box blurs: the expensive part
        colour = sum(np.roll(np.roll(colour, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    value = (colour, np.random.default_rng(seed).random(colour.shape))
    _SHARED[key] = value
    if len(_SHARED) > SHARED_CACHE_SIZE:
        _SHARED.popitem(last=False)
    return value


def clear_shared() -> None:
    _SHARED.clear()
    SHARED_CALLS.clear()


class SharedBlobs:
    """Score = alpha * colour saturation + (1 - alpha) * noise: the shared part is cached."""

    @dataclass(frozen=True)
    class Config:
        alpha: float = 0.5
        cost: int = 1

    def __init__(self, config: Config):
        self.config = config

    def predict(self, batch: Batch) -> list[Prediction]:
        out = []
        for image, seed in zip(batch.images, batch.seeds):
            colour, noise = shared_features(image, seed, self.config.cost)
            scores = np.clip(self.config.alpha * colour + (1 - self.config.alpha) * noise, 0, 1)
            out.append(Prediction(scores=scores))
        return out


# -- spies: what ran, and where -----------------------------------------------------------------
@refbench.hookimpl
def refbench_datasets():
    return [refbench.DatasetSpec("spy_shapes", "rb_testplugin:SpyReader",
                                 "RefShapes through a reader that records that it was opened",
                                 "refshapes", {"name": "refshapes"})]


class SpyReader:
    """The REFER reader, leaving a line in $RB_SPY_LOG each time it is constructed."""

    def __new__(cls, root, name: str, split_by: str | None = None, image_dir: str | None = None):
        import os
        from pathlib import Path

        from refbench.data.refer import ReferDataset

        if os.environ.get("RB_SPY_LOG"):
            with open(os.environ["RB_SPY_LOG"], "a") as log:
                log.write(f"opened {root}\n")
        return ReferDataset(Path(root), name, split_by=split_by, image_dir=image_dir)


class LoggedBlobs(NoiseBlobs):
    """NoiseBlobs that appends "<pid> <sample id>" to $RB_COMPUTE_LOG for every sample it
    predicts: which process computed what."""

    def predict(self, batch: Batch) -> list[Prediction]:
        import os

        out = super().predict(batch)
        if os.environ.get("RB_COMPUTE_LOG"):
            with open(os.environ["RB_COMPUTE_LOG"], "a") as log:
                log.writelines(f"{os.getpid()} {s.sample_id}\n" for s in batch.samples)
        return out
