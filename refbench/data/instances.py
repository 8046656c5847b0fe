"""A COCO instances file, read and checked once for every reader that uses one.

The REFER layout and the COCO semantic reader both read ``images``, ``annotations`` and
``categories``; both need the same guarantees before a figure is computed from them: ids that
are whole numbers and unique, images with a file name and a positive size, annotations on an
image that exists and of a category that exists, and segmentations that describe a region of
their image. Records are type-checked when the file is indexed (a tight loop that builds the
``Fields`` report only for a record that fails); a segmentation is checked when its mask is
first built, so a split pays only for the annotations it uses.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.data.masks import BadSegmentation, segmentation_to_rle
from refbench.data.schema import Fields, Problem, Validator, shown, top_level_list
from refbench.errors import UserError

FIX = "fix or drop that record, or regenerate the file"


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int


@dataclass
class Instances:
    """The checked index of one instances file."""

    path: Path
    validator: Validator
    images: dict[int, ImageRecord]
    annotations: dict[int, dict[str, Any]]
    categories: dict[int, str]
    by_image: dict[int, list[int]] = field(default_factory=dict)
    _masks: dict[int, dict[str, Any] | None] = field(default_factory=dict)

    def mask(self, ann_id: int) -> dict[str, Any] | None:
        """The annotation's segmentation as one RLE on its image (None after a collected
        problem)."""
        if ann_id not in self._masks:
            ann = self.annotations[ann_id]
            image = self.images[ann["image_id"]]
            try:
                self._masks[ann_id] = segmentation_to_rle(ann.get("segmentation"), image.height,
                                                          image.width)
            except BadSegmentation as error:
                self.validator.report(Problem(
                    self.path, f"annotation {ann_id} (on image {image.image_id})", "segmentation",
                    error.what, "fix or drop that annotation (refbench data check lists every one)"))
                self._masks[ann_id] = None
        return self._masks[ann_id]


def _is_id(value: Any) -> bool:
    return type(value) is int


def _image(validator: Validator, path: Path, index: int, raw: Any) -> ImageRecord | None:
    if (isinstance(raw, dict) and _is_id(raw.get("id")) and type(raw.get("file_name")) is str
            and raw["file_name"] and _is_id(raw.get("height")) and _is_id(raw.get("width"))
            and raw["height"] > 0 and raw["width"] > 0):
        return ImageRecord(raw["id"], raw["file_name"], raw["height"], raw["width"])
    record = f"images[{index}]" + (f" (id {shown(raw.get('id'))})" if isinstance(raw, dict) else "")
    f = Fields(validator, path, record, raw, FIX)
    image_id, name = f.integer("id"), f.text("file_name", nonempty=True)
    height, width = f.integer("height", minimum=1), f.integer("width", minimum=1)
    return ImageRecord(image_id, name, height, width) if f.ok else None  # type: ignore[arg-type]


def _annotation(validator: Validator, path: Path, index: int, raw: Any,
                images: dict[int, ImageRecord], categories: dict[int, str]) -> dict[str, Any] | None:
    fast = (isinstance(raw, dict) and _is_id(raw.get("id")) and raw.get("image_id") in images
            and _is_id(raw.get("image_id"))
            and (_is_id(raw.get("category_id")) and raw["category_id"] in categories if categories
                 else raw.get("category_id") is None or _is_id(raw.get("category_id")))
            and raw.get("iscrowd", 0) in (0, 1))
    if fast:
        return raw
    record = f"annotations[{index}]" + (f" (id {shown(raw.get('id'))})" if isinstance(raw, dict) else "")
    f = Fields(validator, path, record, raw, FIX)
    f.integer("id")
    image_id = f.integer("image_id")
    category_id = f.integer("category_id", required=bool(categories))  # none without categories
    crowd = f.integer("iscrowd", required=False, default=0)
    if f.ok and image_id not in images:
        f.problem("image_id", f"is {image_id}, which no entry of 'images' has")
    if f.ok and categories and category_id not in categories:
        f.problem("category_id", f"is {category_id}, which no entry of 'categories' has")
    if f.ok and crowd not in (0, 1):
        f.problem("iscrowd", f"is {crowd}, not 0 or 1")
    return raw if f.ok else None


def _categories(validator: Validator, path: Path, raw: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    seen: dict[Any, str] = {}
    for index, item in enumerate(raw):
        f = Fields(validator, path, f"categories[{index}]", item, FIX)
        category_id, name = f.integer("id"), f.text("name", nonempty=True)
        if f.ok and validator.unique(seen, category_id, path, f"categories[{index}]", "id", "give each category its own id"):
            out[category_id] = name  # type: ignore[index,assignment]
    return out


def index_instances(data: Any, path: Path, hint: str, validator: Validator,
                    require_categories: bool = False) -> Instances:
    """Index COCO instances ``data`` (read from ``path``, or built from other files there),
    reporting the first bad record through ``validator``."""
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not a COCO instances object "
                        f"with 'images' and 'annotations': {hint}")
    layout = ("a COCO instances file holds the lists 'images', 'annotations' and 'categories' "
              "(see the README's 'Data layout'): regenerate or re-download it")
    images_raw = top_level_list(validator, path, data, "images", layout)
    annotations_raw = top_level_list(validator, path, data, "annotations", layout)
    categories_raw: list[Any] = []
    if require_categories or "categories" in data:
        categories_raw = top_level_list(validator, path, data, "categories", layout)
    categories = _categories(validator, path, categories_raw)

    images: dict[int, ImageRecord] = {}
    first_image: dict[Any, str] = {}
    for index, raw in enumerate(images_raw):
        image = _image(validator, path, index, raw)
        if image and validator.unique(first_image, image.image_id, path, f"images[{index}]", "id", "give each image its own id"):
            images[image.image_id] = image
    annotations: dict[int, dict[str, Any]] = {}
    by_image: dict[int, list[int]] = defaultdict(list)
    first_ann: dict[Any, str] = {}
    for index, raw in enumerate(annotations_raw):
        ann = _annotation(validator, path, index, raw, images, categories)
        if ann and validator.unique(first_ann, ann["id"], path, f"annotations[{index}]", "id", "give each annotation its own id"):
            annotations[ann["id"]] = ann
            by_image[ann["image_id"]].append(ann["id"])
    return Instances(path, validator, images, annotations, categories, dict(by_image))
