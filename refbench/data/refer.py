"""Reader for the RefCOCO family in the layout of REFER, LAVT and VPD.

    <root>/<dataset>/refs(<splitBy>).p     pickled list of refs (restricted unpickling)
    <root>/<dataset>/instances.json        COCO instances of the referred images
    <root>/images/train2014/<file_name>    images (directory configurable)

One sample per sentence, ``sample_id = sent_id``; the ground truth is the referred annotation's
mask, its polygons merged into one RLE.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from refbench.data.files import combine_hashes, file_sha256, read_json
from refbench.data.masks import segmentation_to_rle
from refbench.data.safe_pickle import load_plain_pickle
from refbench.data.sample import Sample
from refbench.errors import UserError, did_you_mean

# The split-bys each public data set was released with (REFER's README).
KNOWN_SPLIT_BYS = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}


def layout_hint(root: Path, name: str, split_by: str, image_dir: Path) -> str:
    return (f"expected the REFER layout {root}/{name}/refs({split_by}).p, "
            f"{root}/{name}/instances.json and images under {image_dir} "
            f"(see the README's 'Data layout'; --image-dir sets the image folder)")


class ReferDataset:
    """A RefCOCO-family data set (refcoco, refcoco+, refcocog, or any data in that layout)."""

    task = "referring"

    def __init__(self, root: Path, name: str, split_by: str | None = None,
                 image_dir: str | Path | None = None, default_split_by: str = "unc",
                 kinds: tuple[str, ...] | list[str] | None = None):
        self.root = Path(root)
        self.name = name
        # keep only sentences of these kinds (RefShapes records one per sentence): a subset
        # such as the attribute-distractor expressions, evaluated as a data set of its own
        self.kinds = tuple(sorted(kinds)) if kinds else None
        self.split_by = split_by or default_split_by
        known = KNOWN_SPLIT_BYS.get(name)
        if known and self.split_by not in known:
            raise did_you_mean(self.split_by, known, f"split-by for {name}")
        self.image_dir = Path(image_dir) if image_dir else self.root / "images" / "train2014"
        self.refs_path = self.root / name / f"refs({self.split_by}).p"
        self.instances_path = self.root / name / "instances.json"
        self.hint = layout_hint(self.root, name, self.split_by, self.image_dir)

    # -- raw files -------------------------------------------------------------------------
    @cached_property
    def refs(self) -> list[dict[str, Any]]:
        if not self.refs_path.is_file():
            raise UserError(f"missing {self.refs_path}: {self.hint}")
        refs = load_plain_pickle(self.refs_path)
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise UserError(f"{self.refs_path} is not a list of refs: {self.hint}")
        return refs

    @cached_property
    def instances(self) -> dict[str, Any]:
        data = read_json(self.instances_path, self.hint)
        if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
            raise UserError(f"{self.instances_path} lacks 'images'/'annotations': not a COCO "
                            f"instances file; {self.hint}")
        return data

    @cached_property
    def _images(self) -> dict[int, dict[str, Any]]:
        return {int(img["id"]): img for img in self.instances["images"]}

    @cached_property
    def _annotations(self) -> dict[int, dict[str, Any]]:
        return {int(ann["id"]): ann for ann in self.instances["annotations"]}

    @cached_property
    def _categories(self) -> dict[int, str]:
        return {int(c["id"]): c["name"] for c in self.instances.get("categories", [])}

    # -- Dataset interface -----------------------------------------------------------------
    def splits(self) -> list[str]:
        return sorted({str(r.get("split")) for r in self.refs})

    def fingerprint(self, split: str) -> str:
        return combine_hashes("refer", self.name, self.split_by, split, *(self.kinds or ()),
                              file_sha256(self.refs_path), file_sha256(self.instances_path))

    def samples(self, split: str) -> list[Sample]:
        available = self.splits()
        if split not in available:
            raise did_you_mean(split, available, f"split of {self.name} ({self.split_by})")
        out: list[Sample] = []
        gt_cache: dict[int, dict[str, Any]] = {}
        for ref in self.refs:
            if ref.get("split") != split:
                continue
            try:
                ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{self.refs_path}: ref {ref.get('ref_id')!r} lacks ann_id or "
                                f"image_id: {self.hint}") from None
            image = self._images.get(image_id)
            ann = self._annotations.get(ann_id)
            if image is None or ann is None:
                raise UserError(f"{self.refs_path}: ref {ref.get('ref_id')!r} points at "
                                f"{'image ' + str(image_id) if image is None else 'annotation ' + str(ann_id)}, "
                                f"which {self.instances_path} lacks: the two files do not belong together")
            h, w = int(image["height"]), int(image["width"])
            if ann_id not in gt_cache:
                gt_cache[ann_id] = segmentation_to_rle(ann.get("segmentation"), h, w,
                                                       f"annotation {ann_id} in {self.instances_path}")
            category_id = int(ref.get("category_id", ann.get("category_id", 0)))
            for sentence in ref.get("sentences", []):
                if self.kinds is not None and sentence.get("kind") not in self.kinds:
                    continue
                text = sentence.get("raw") or sentence.get("sent") or ""
                meta = {"ref_id": ref.get("ref_id"), "ann_id": ann_id, "category_id": category_id,
                        "category": self._categories.get(category_id, "")}
                if "kind" in sentence:
                    meta["kind"] = sentence["kind"]
                out.append(Sample(
                    sample_id=str(sentence["sent_id"]), image_id=image_id,
                    image_path=self.image_dir / image["file_name"], height=h, width=w,
                    expression=text.strip(), gt=gt_cache[ann_id], meta=meta))
        return out

    def label_map(self, image_id: int) -> np.ndarray:
        raise NotImplementedError("referring data sets have no label maps")

    def category_names(self) -> dict[int, str]:
        return dict(self._categories)
