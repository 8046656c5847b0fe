"""Captions for RefShapes scenes: every object named by its shape, most also by colour.

The captions are the text side of the miniature model's training pairs. They have to teach the
words the referring expressions use: colour-and-shape names ("a red circle"), bare shape names
("the circle", as the plain-name expressions say), the "that is red" form, and the spatial
relations. A quarter of the mentions drop the colour, because a text encoder that has only ever
seen "red circle" gives "the circle" alone an embedding that attends nowhere in particular.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from refbench.data.shapes import _relation

PREFIXES = ("", "a photograph of ", "a picture of ", "an image of ")
DETERMINERS = ("a ", "the ", "")


class SceneObject(Protocol):
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float


def _mention(obj: SceneObject, rng: np.random.Generator, colour_rate: float) -> str:
    determiner = DETERMINERS[int(rng.choice(3, p=(0.6, 0.3, 0.1)))]
    if rng.random() >= colour_rate:
        return f"{determiner}{obj.shape}"
    if rng.random() < 0.1:
        return f"{determiner}{obj.shape} that is {obj.colour}"
    return f"{determiner}{obj.colour} {obj.shape}"


def describe(objects: Sequence[SceneObject], rng: np.random.Generator, colour_rate: float = 0.75,
             relation_rate: float = 0.3) -> str:
    """One caption naming every object of a scene, in random order, maybe with a relation."""
    order = [objects[int(i)] for i in rng.permutation(len(objects))]
    items: list[str] = []
    if len(order) >= 2 and rng.random() < relation_rate:
        pairs = [(a, b, _relation(a, b)) for a in order for b in order if a is not b]
        pairs = [p for p in pairs if p[2] is not None]
        if pairs:
            a, b, rel = pairs[int(rng.integers(len(pairs)))]
            items.append(f"{_mention(a, rng, colour_rate)} {rel} {_mention(b, rng, colour_rate)}")
            order = [o for o in order if o is not a and o is not b]
    items += [_mention(o, rng, colour_rate) for o in order]
    body = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return PREFIXES[int(rng.integers(len(PREFIXES)))] + body
