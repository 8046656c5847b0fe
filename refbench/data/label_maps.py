"""Reader for semantic segmentation stored as images plus PNG label maps (VOC, Pascal Context,
COCO-Object), in the layouts mmsegmentation and GroupViT read.

A label map is a palette ("P", VOC's SegmentationClass) or greyscale ("L") PNG whose pixel
values are class indices: 0 background, 1..K the classes of the label set (``label_names``),
255 ignored (VOC's object boundaries). The image list of a split is either a list file
(``ImageSets/Segmentation/val.txt``, one name per line) or every label map in the split's folder
(COCO-Object). Image ``<name><image_suffix>`` pairs with label map ``<name><label_suffix>``.

The protocol is the image-level-labels one the zero-shot papers use (GroupViT, DiffSegmenter):
each image contributes one sample per class present in its label map, the class's prompt name as
the text, so a method is told which classes to look for and not asked to find them; the label map
scores the image as a whole (confusion summed over the data set, 255 ignored, then per-class IoU
over background and the classes, the mean over classes seen). An image with no class present
gives no sample, so its background pixels are not counted (the papers count them; such images
are rare: none in VOC val).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from refbench.data.files import combine_hashes, file_sha256
from refbench.data.label_names import LabelSet, label_set
from refbench.data.masks import encode
from refbench.data.sample import Sample
from refbench.errors import UserError, did_you_mean

IGNORE = 255
BACKGROUND = 0
_NUMERIC_NAME = re.compile(r"\d+(_\d+)*")


def read_label_map(path: Path, labels: LabelSet, offset: int = 0) -> np.ndarray:
    """A label PNG as an H x W uint8 array of class indices, checked against the label set.

    ``offset`` is added to every value but 255 (Cityscapes' trainIds 0..18 become 1..19)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.array(image)
    except FileNotFoundError:
        raise UserError(f"missing label map {path}: every listed image needs one (see the "
                        f"README's 'Data layout')") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"label map {path} cannot be read ({error}): restore the file") from None
    if mode not in ("P", "L"):
        raise UserError(f"label map {path} is a {mode} image, not class indices (a palette or "
                        f"greyscale PNG): use the original annotation PNGs, not colour renderings")
    values = np.unique(array)
    highest = labels.last_label - offset
    bad = [int(v) for v in values if v > highest and v != IGNORE]
    if bad:
        raise UserError(f"label map {path} has value {bad[0]}, outside 0..{highest} and "
                        f"{IGNORE} (ignore) of {labels.name}: wrong folder, or labels not converted "
                        f"(see the README's 'Data layout')")
    array = array.astype(np.uint8, copy=False)
    if offset:
        array = np.where(array == IGNORE, IGNORE, array + offset).astype(np.uint8)
    return array


def image_ids(names: list[str]) -> dict[str, int]:
    """Integer ids for image names: the digits of numeric names (VOC's 2007_000033 ->
    2007000033, COCO's 000000000139 -> 139), else the position in the sorted list."""
    if all(_NUMERIC_NAME.fullmatch(n) for n in names):
        ids = {n: int(n.replace("_", "")) for n in names}
        if len(set(ids.values())) == len(ids):
            return ids
    return {n: i + 1 for i, n in enumerate(sorted(names))}


class LabelMapDataset:
    """Images with PNG label maps, read as semantic segmentation (classes present per image).

    ``background`` chooses the protocol: True counts background as a class (VOC21, Context60,
    COCO-Object with background); False ignores background pixels and every other pixel takes
    one of the classes prompted (VOC20, PC59, COCO-Object80, and ADE20K-150 and Cityscapes-19,
    whose data have no background class). ``label_offset`` shifts stored values (Cityscapes'
    trainIds start at 0, a class). Label maps may sit in subfolders (Cityscapes' cities): a name
    is then the path below the split's folder, ``frankfurt/frankfurt_000000_000294``."""

    task = "semantic"

    def __init__(self, root: Path, name: str, labels: str, image_subdir: str, label_subdir: str,
                 split_list: str | None = None, label_suffix: str = ".png",
                 image_suffix: str = ".jpg", image_dir: str | Path | None = None,
                 prompt_names: str = "readable", background: bool = True, label_offset: int = 0):
        self.root = Path(root)
        self.name = name
        self.labels = label_set(labels)
        if background and not self.labels.has_background:
            raise UserError(f"{name} has no background class ({self.labels.benchmark(False)} is "
                            f"evaluated without one): drop the option background=true")
        if label_offset < 0:
            raise UserError(f"label_offset of {name} must be 0 or more, got {label_offset}")
        self.background, self.label_offset = bool(background), int(label_offset)
        self.image_subdir, self.label_subdir = image_subdir, label_subdir
        self.split_list, self.label_suffix, self.image_suffix = split_list, label_suffix, image_suffix
        self._image_dir = Path(image_dir) if image_dir else None
        self.prompt_names = prompt_names
        self._prompts = self.labels.prompts(prompt_names)  # checks the preset now
        self._label_paths: dict[int, Path] = {}

    @property
    def benchmark(self) -> str:
        """The protocol's table name: VOC21 or VOC20, Context60 or PC59, ..."""
        return self.labels.benchmark(self.background)

    def _hint(self, split: str = "<split>") -> str:
        listed = (f"the image list {self.root / self.split_list.format(split=split)}, "
                  if self.split_list else "")
        return (f"expected {listed}label maps {self.label_dir(split)}/<name>{self.label_suffix} and "
                f"images {self.image_dir(split)}/<name>{self.image_suffix} (see the README's "
                f"'Data layout'; --image-dir sets the image folder)")

    def image_dir(self, split: str) -> Path:
        return self._image_dir or self.root / self.image_subdir.format(split=split)

    def label_dir(self, split: str) -> Path:
        return self.root / self.label_subdir.format(split=split)

    def splits(self) -> list[str]:
        if self.split_list:
            pattern = self.root / self.split_list
            folder, suffix = pattern.parent, pattern.name.replace("{split}", "")
            return sorted(p.name[:-len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []
        parent = (self.root / self.label_subdir).parent
        return sorted(p.name for p in parent.iterdir()
                      if p.is_dir() and any(p.rglob(f"*{self.label_suffix}"))) if parent.is_dir() else []

    @lru_cache(maxsize=4)
    def names(self, split: str) -> tuple[str, ...]:
        """The split's image names, in list order (or sorted, for a folder of label maps)."""
        available = self.splits()
        if split not in available:
            if available:
                raise did_you_mean(split, available, f"split of {self.name}")
            raise UserError(f"no split {split!r} of {self.name} under {self.root}: {self._hint(split)}")
        if self.split_list:
            path = self.root / self.split_list.format(split=split)
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise UserError(f"{path} lists {n!r} twice: each image once")
                seen.add(n)
        else:
            folder = self.label_dir(split)
            names = sorted(p.relative_to(folder).as_posix()[:-len(self.label_suffix)]
                           for p in folder.rglob(f"*{self.label_suffix}"))
        if not names:
            raise UserError(f"split {split!r} of {self.name} lists no image: {self._hint(split)}")
        return tuple(names)

    def _label_path(self, split: str, name: str) -> Path:
        return self.label_dir(split) / f"{name}{self.label_suffix}"

    def fingerprint(self, split: str) -> str:
        names = self.names(split)
        protocol = () if self.background and not self.label_offset else (
            f"background={self.background}", f"offset={self.label_offset}")  # older keys kept
        return combine_hashes("label-maps", self.name, split, self.prompt_names, *protocol, *names,
                              *(file_sha256(self._label_path(split, n)) for n in names))

    def samples(self, split: str) -> list[Sample]:
        names = self.names(split)
        ids = image_ids(list(names))
        out: list[Sample] = []
        for name in names:
            path = self._label_path(split, name)
            labels = read_label_map(path, self.labels, self.label_offset)
            image_id = ids[name]
            self._label_paths[image_id] = path
            h, w = labels.shape
            present = sorted(int(c) for c in np.unique(labels) if c not in (BACKGROUND, IGNORE))
            for category in present:
                out.append(Sample(
                    sample_id=f"{name}:{category}", image_id=image_id,
                    image_path=self.image_dir(split) / f"{name}{self.image_suffix}",
                    height=h, width=w, expression=self._prompts[category],
                    gt=encode(labels == category), group_id=name,
                    meta={"category_id": category, "category": self.labels.classes[category],
                          "image": name},
                    is_class_name=True))
        return out

    def label_map(self, image_id: int) -> np.ndarray:
        """The label map of an image listed by ``samples`` (read again: PNGs are small)."""
        try:
            path = self._label_paths[image_id]
        except KeyError:
            raise KeyError(f"image {image_id} was not listed by samples()") from None
        labels = read_label_map(path, self.labels, self.label_offset)
        return labels if self.background else np.where(labels == BACKGROUND, IGNORE, labels).astype(np.uint8)

    def category_names(self) -> dict[int, str]:
        return {i: c for i, c in enumerate(self.labels.classes) if i > 0}
