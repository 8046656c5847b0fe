"""Captions for RefShapes scenes: every object named by its shape, most also by colour.

The captions are the text side of the miniature model's training pairs. They have to teach the
words the referring expressions use: colour-and-shape names ("a red circle"), bare shape names
("the circle", as the plain-name expressions say), the "that is red" form, and the spatial
relations. Some mentions drop the colour (a quarter by default, ``colour_rate``), because a text
encoder that has only ever seen "red circle" gives "the circle" alone an embedding that attends
nowhere in particular; and because a shape word after its colour word can find its object by the
colour its embedding carries, only the bare mentions make the UNet tell shapes apart.

Each caption also says which characters name which object (its shape word and colour word):
the grounding loss of ``pretrain-shapes`` (``grounding.py``) needs to know where every named
word's attention belongs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from refbench.data.shapes import _relation

PREFIXES = ("", "a photograph of ", "a picture of ", "an image of ")
DETERMINERS = ("a ", "the ", "")
COLOUR_RATE = 0.75  # default share of mentions naming the colour as well as the shape


class SceneObject(Protocol):
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Caption:
    """A caption and the words in it that name objects: (start, end, object index) spans."""

    text: str
    words: tuple[tuple[int, int, int], ...]


class _Builder:
    """Appends text while recording which spans name which object."""

    def __init__(self) -> None:
        self.text = ""
        self.words: list[tuple[int, int, int]] = []

    def add(self, text: str, names: int | None = None) -> None:
        if names is not None:
            self.words.append((len(self.text), len(self.text) + len(text), names))
        self.text += text


def _mention(out: _Builder, index: int, obj: SceneObject, rng: np.random.Generator,
             colour_rate: float) -> None:
    out.add(DETERMINERS[int(rng.choice(3, p=(0.6, 0.3, 0.1)))])
    if rng.random() >= colour_rate:
        out.add(obj.shape, index)
    elif rng.random() < 0.1:
        out.add(obj.shape, index)
        out.add(" that is ")
        out.add(obj.colour, index)
    else:
        out.add(obj.colour, index)
        out.add(" ")
        out.add(obj.shape, index)


def describe(objects: Sequence[SceneObject], rng: np.random.Generator, colour_rate: float = COLOUR_RATE,
             relation_rate: float = 0.3) -> Caption:
    """One caption naming every object of a scene, in random order, maybe with a relation."""
    order = [int(i) for i in rng.permutation(len(objects))]
    groups: list[list[tuple[int, str | None]]] = []  # mentions joined by a relation, or alone
    if len(order) >= 2 and rng.random() < relation_rate:
        pairs = [(a, b, _relation(objects[a], objects[b])) for a in order for b in order if a != b]
        pairs = [p for p in pairs if p[2] is not None]
        if pairs:
            a, b, rel = pairs[int(rng.integers(len(pairs)))]
            groups.append([(a, rel), (b, None)])
            order = [o for o in order if o not in (a, b)]
    groups += [[(o, None)] for o in order]
    out = _Builder()
    for g, group in enumerate(groups):
        if g:
            out.add(" and " if g == len(groups) - 1 else ", ")
        for index, relation in group:
            _mention(out, index, objects[index], rng, colour_rate)
            if relation:
                out.add(f" {relation} ")
    prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]  # drawn last, as the shipped model's run did
    return Caption(prefix + out.text, tuple((s + len(prefix), e + len(prefix), i) for s, e, i in out.words))
