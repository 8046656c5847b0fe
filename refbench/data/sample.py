"""The Sample record and the Dataset interface every reader implements."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Task = Literal["referring", "semantic"]


@dataclass(frozen=True)
class Sample:
    """One thing to segment: an image, a text, and the ground truth as COCO RLE.

    For referring data a sample is one sentence (``sample_id`` is its sent_id). For semantic
    data it is one class present in an image, and ``group_id`` ties the classes of one image
    together so the image can be scored as a label map; its text is the class name
    (``is_class_name``), which methods may prompt for differently from a referring expression.
    """

    sample_id: str
    image_id: int
    image_path: Path
    height: int
    width: int
    expression: str
    gt: Mapping[str, Any]  # COCO RLE: {"size": [h, w], "counts": str}
    group_id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    is_class_name: bool = False
    origin: str = field(default="", compare=False)  # the record it was read from, for messages

    @property
    def group(self) -> str:
        return self.group_id or self.sample_id


class Dataset(Protocol):
    """A reader of one data set on disk."""

    name: str
    task: Task

    def splits(self) -> list[str]:
        """The split names this copy of the data set has."""
        ...

    def samples(self, split: str) -> list[Sample]:
        """All samples of ``split`` in a fixed order (groups contiguous)."""
        ...

    def fingerprint(self, split: str) -> str:
        """A hash of everything that defines the split's samples and ground truth."""
        ...

    def label_map(self, image_id: int) -> np.ndarray:
        """Semantic data only: per-pixel category id (0 background, 255 ignore)."""
        ...

    def category_names(self) -> dict[int, str]:
        """Semantic data only: category id -> name."""
        ...


def first_samples(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples, extended to the end of the last group (an image of semantic
    data is scored as a whole)."""
    return take_samples(samples, limit, lambda sample: True)[1]


def take_samples(source: Iterable[Sample], limit: int | None,
                 keep: Callable[[Sample], bool]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Read ``source`` only as far as ``first_samples(<the samples keep accepts>, limit)``
    needs: the first ``limit`` accepted samples, to the end of the last one's group. Returns
    every sample read, the accepted ones (cut) and the refused ones read (a reader that yields
    its samples lazily builds only these, so ``--limit 1`` of a large split is quick)."""
    built: list[Sample] = []
    kept: list[Sample] = []
    refused: list[Sample] = []
    for sample in source:
        accepted = keep(sample)
        if limit is not None and len(kept) >= limit and accepted and sample.group != kept[-1].group:
            break
        built.append(sample)
        (kept if accepted else refused).append(sample)
    return built, kept, refused


def group_batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Batches of about ``batch_size`` samples made of whole groups."""
    batch: list[Sample] = []
    for _, members in groupby(samples, key=lambda s: s.group):
        batch.extend(members)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
