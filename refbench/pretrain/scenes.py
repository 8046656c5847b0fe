"""Captioned RefShapes scenes drawn on the fly, at the miniature model's input size.

Scenes come from the same generator as the RefShapes data set (sizes, colours, object counts,
noise), with their own random stream, and are resized to the model's input exactly as
evaluation resizes images (``to_pixels``), so training and evaluation see the same pixels.
A pool keeps a few thousand scenes and replaces some every step: generating a whole batch per
step would cost a quarter of each step on two cores, and a fixed set would be memorised.
Each scene keeps its objects' visible masks at the latent resolution, for the grounding loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from refbench.data.shapes import ShapesConfig, _render, _scene
from refbench.diffusion.latents import to_pixels
from refbench.pretrain.captions import COLOUR_RATE, Caption, describe

OBJECTS = (2, 6)  # from testA's sparsest scenes to testB's most crowded


@dataclass(frozen=True)
class Scene:
    """One drawn scene at the model's input size."""

    pixels: torch.Tensor  # (3, size, size) in [-1, 1]
    caption: Caption
    masks: torch.Tensor  # (objects, r, r): the share of each cell of an r x r grid each object covers
    objects: tuple[tuple[str, str], ...]  # (shape, colour) of each object, in the masks' order


def draw_scene(rng: np.random.Generator, size: int, mask_size: int,
               colour_rate: float = COLOUR_RATE) -> Scene:
    """One captioned scene with its objects' visible masks at mask_size x mask_size; a share
    ``colour_rate`` of its caption's mentions name the colour as well as the shape."""
    sizes = ShapesConfig().sizes
    h, w = sizes[int(rng.integers(len(sizes)))]
    objects = _scene(rng, int(rng.integers(OBJECTS[0], OBJECTS[1] + 1)), h, w, ShapesConfig().min_visible)
    image = _render(objects, rng, h, w)
    visible = torch.from_numpy(np.stack([o.visible for o in objects])).float()
    masks = F.interpolate(visible[:, None], size=(mask_size, mask_size), mode="area")[:, 0]
    return Scene(to_pixels([image], size)[0], describe(objects, rng, colour_rate), masks,
                 tuple((o.shape, o.colour) for o in objects))


class ScenePool:
    """A refreshed pool of captioned scenes to sample training batches from."""

    def __init__(self, size: int, pool_size: int, seed: int, mask_size: int, colour_rate: float):
        self.size, self.mask_size, self.colour_rate = size, mask_size, colour_rate
        self.rng = np.random.default_rng(seed)
        drawn = [draw_scene(self.rng, size, mask_size, colour_rate) for _ in range(pool_size)]
        self.pixels = torch.stack([scene.pixels for scene in drawn])
        self.captions = [scene.caption for scene in drawn]
        self.masks = [scene.masks for scene in drawn]
        self.drawn = pool_size

    def refresh(self, count: int) -> list[int]:
        """Replace ``count`` random entries with new scenes; returns their indices."""
        indices = [int(i) for i in self.rng.choice(len(self.captions), size=count, replace=False)]
        for i in indices:
            scene = draw_scene(self.rng, self.size, self.mask_size, self.colour_rate)
            self.pixels[i], self.captions[i], self.masks[i] = scene.pixels, scene.caption, scene.masks
        self.drawn += count
        return indices

    def batch(self, batch_size: int) -> tuple[list[int], torch.Tensor, list[Caption]]:
        indices = [int(i) for i in self.rng.choice(len(self.captions), size=batch_size, replace=False)]
        return indices, self.pixels[indices], [self.captions[i] for i in indices]
