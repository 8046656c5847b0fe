"""Reader for COCO-style semantic segmentation from an instances file.

    <root>/annotations/instances_<split>.json
    <root>/<split>/<file_name>                  (image folder configurable)

Per image, every category with visible pixels becomes one sample (its name is the text to
segment); the image's label map is painted from the instance masks: crowd regions are ignored
(255), then instances are painted largest first so a small object on a large one stays visible.
A class's ground truth is exactly its pixels in that label map, so per-class and confusion-matrix
scores agree.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from refbench.data.files import combine_hashes, file_sha256
from refbench.data.index_cache import read_instances
from refbench.data.instances import ImageRecord, Instances
from refbench.data.masks import decode, encode
from refbench.data.sample import Sample
from refbench.data.schema import Problem, Validator
from refbench.errors import did_you_mean

IGNORE = 255
BACKGROUND = 0


class CocoSemanticDataset:
    """COCO instances read as a semantic segmentation task (classes present per image)."""

    task = "semantic"

    def __init__(self, root: Path, name: str = "coco", image_dir: str | Path | None = None,
                 image_subdir: str = "{split}", background: bool = True):
        self.root = Path(root)
        self.name = name
        # the protocol: background a class (True), or ignored with every other pixel taking one
        # of the classes prompted (False), as LabelMapDataset's option of the same name
        self.background = bool(background)
        self._image_dir = Path(image_dir) if image_dir else None
        self.image_subdir = image_subdir
        # strict: the first bad record is the error; `refbench data check` collects them all
        self.validator = Validator()

    def _hint(self, split: str = "<split>") -> str:
        return (f"expected the COCO layout {self.root}/annotations/instances_{split}.json with "
                f"images under {self.image_dir(split)} (see the README's 'Data layout')")

    def image_dir(self, split: str) -> Path:
        return self._image_dir or self.root / self.image_subdir.format(split=split)

    def _instances_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def splits(self) -> list[str]:
        folder = self.root / "annotations"
        return sorted(p.name[len("instances_"):-len(".json")]
                      for p in folder.glob("instances_*.json")) if folder.is_dir() else []

    @lru_cache(maxsize=4)
    def _instances(self, split: str) -> Instances:
        path = self._instances_path(split)
        if not path.is_file():
            available = self.splits()
            if available:
                raise did_you_mean(split, available, f"split of {self.name}")
        return read_instances(path, self._hint(split), self.validator, require_categories=True)

    def category_names(self, split: str | None = None) -> dict[int, str]:
        splits = [split] if split else self.splits()[:1]
        names: dict[int, str] = {}
        for s in splits:
            names.update(self._instances(s).categories)
        return names

    def fingerprint(self, split: str) -> str:
        self._instances(split)  # validates presence first
        protocol = () if self.background else ("background=False",)  # older keys kept
        return combine_hashes("coco-semantic", self.name, split, *protocol,
                              file_sha256(self._instances_path(split)))

    @property
    def benchmark(self) -> str:
        return f"{self.name} ({'with' if self.background else 'without'} background)"

    def _paint(self, instances: Instances, image: ImageRecord) -> np.ndarray | None:
        """The image's label map; None when one of its annotations had a (collected) problem."""
        labels = np.full((image.height, image.width), BACKGROUND, dtype=np.uint8)
        masks = []
        for ann_id in instances.by_image.get(image.image_id, []):
            ann = instances.annotations[ann_id]
            rle = instances.mask(ann_id)
            if rle is None:
                return None
            masks.append((bool(ann.get("iscrowd", 0)), decode(rle), ann["category_id"]))
        for crowd, mask, _ in masks:
            if crowd:
                labels[mask] = IGNORE
        for _, mask, category in sorted((m for m in masks if not m[0]), key=lambda m: -int(m[1].sum())):
            labels[mask] = category
        return labels

    def samples(self, split: str) -> list[Sample]:
        instances = self._instances(split)
        for category_id in instances.categories:
            if not 0 < category_id < IGNORE:
                self.validator.report(Problem(
                    instances.path, f"category {category_id}", "id", "is outside 1..254, which "
                    "label maps need (0 is background, 255 ignored)", "renumber the categories"))
                return []
        names = instances.categories
        out: list[Sample] = []
        for image_id in sorted(instances.images):
            image = instances.images[image_id]
            labels = self._paint(instances, image)
            if labels is None:
                continue
            present = sorted(int(c) for c in np.unique(labels) if c not in (BACKGROUND, IGNORE))
            class_rles = {c: encode(labels == c) for c in present}
            self._label_rles[image_id] = (encode(labels == IGNORE), class_rles)
            for category in present:
                out.append(Sample(
                    sample_id=f"{image_id}:{category}", image_id=image_id,
                    image_path=self.image_dir(split) / image.file_name,
                    height=image.height, width=image.width,
                    expression=names.get(category, str(category)), gt=class_rles[category],
                    group_id=str(image_id), meta={"category_id": category,
                                                  "category": names.get(category, "")},
                    is_class_name=True, origin=f"{instances.path} image {image_id}"))
        return out

    @cached_property
    def _label_rles(self) -> dict[int, tuple[dict[str, Any], dict[int, dict[str, Any]]]]:
        # Label maps are kept as RLEs (ignore region, then one per class): a dense map per
        # image would take gigabytes over COCO val.
        return {}

    def label_map(self, image_id: int) -> np.ndarray:
        """The painted label map of an image listed by ``samples``."""
        try:
            ignore, class_rles = self._label_rles[image_id]
        except KeyError:
            raise KeyError(f"image {image_id} was not listed by samples()") from None
        labels = np.where(decode(ignore) | (not self.background), IGNORE, BACKGROUND).astype(np.uint8)
        for category, rle in class_rles.items():
            labels[decode(rle)] = category
        return labels
