"""RefShapes: synthetic referring-segmentation data written in the real on-disk layouts.

Scenes of coloured circles, squares and triangles on a noisy background. Expressions are built
so that attribute binding matters: "the red circle" is only generated when another circle of a
different colour is in the scene, relations ("the square left of the triangle") only when they
single out one object, plain names ("the triangle") only when the shape is unique. Each sentence
records its ``kind`` (attribute, relation, plain) so results can be broken down by it.

Output (the REFER layout read by ``refbench.data.refer`` plus COCO files per split):

    <root>/refshapes/refs(unc).p
    <root>/refshapes/instances.json
    <root>/annotations/instances_<split>.json
    <root>/images/train2014/shapes_<image_id>.jpg
    <root>/refshapes/manifest.json

The same seed and counts give byte-identical files.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refbench.data.masks import area, encode, segmentation_to_rle

GENERATOR_VERSION = 1
NAME = "refshapes"
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (215, 45, 40), "green": (45, 160, 60), "blue": (45, 85, 215),
    "yellow": (235, 205, 40), "purple": (140, 60, 180), "orange": (240, 135, 30),
}
SPLITS = ("train", "val", "testA", "testB")
# Objects per scene by split: testA sparse, testB crowded (as RefCOCO's testA/testB differ).
OBJECTS_PER_SCENE = {"train": (2, 5), "val": (2, 5), "testA": (2, 3), "testB": (4, 6)}
KINDS = ("attribute", "relation", "plain")


@dataclass(frozen=True)
class ShapesConfig:
    seed: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"train": 600, "val": 100,
                                                            "testA": 60, "testB": 60})
    sizes: tuple[tuple[int, int], ...] = ((192, 192), (224, 256), (256, 256), (256, 224), (192, 256))
    min_visible: float = 0.6


@dataclass
class _Object:
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float
    angle: float
    polygon: list[float]
    mask: np.ndarray  # full (amodal) mask
    visible: np.ndarray | None = None


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    if shape == "circle":
        n, phase, radius = 48, 0.0, r
    elif shape == "square":
        n, phase, radius = 4, math.pi / 4 + angle, r * math.sqrt(2) * 0.85
    else:
        n, phase, radius = 3, -math.pi / 2 + angle, r * 1.15
    points: list[float] = []
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        points += [round(cx + radius * math.cos(a), 2), round(cy + radius * math.sin(a), 2)]
    return points


def _relation(a: _Object, b: _Object) -> str | None:
    """Spatial relation of a to b, or None when neither axis dominates clearly."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) > 1.5 * abs(dy) and abs(dx) > a.radius + b.radius:
        return "left of" if dx < 0 else "right of"
    if abs(dy) > 1.5 * abs(dx) and abs(dy) > a.radius + b.radius:
        return "above" if dy < 0 else "below"
    return None


def _describe(obj: _Object, scene: list[_Object]) -> str:
    """The shortest unique name of an object: its shape, or colour and shape."""
    same_shape = [o for o in scene if o.shape == obj.shape]
    return f"the {obj.shape}" if len(same_shape) == 1 else f"the {obj.colour} {obj.shape}"


def _expressions(obj: _Object, scene: list[_Object], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Candidate (kind, sentence) pairs that single out ``obj`` in ``scene``."""
    same_shape = [o for o in scene if o.shape == obj.shape and o is not obj]
    out: list[tuple[str, str]] = []
    if same_shape:
        template = ["the {c} {s}", "{c} {s}", "the {s} that is {c}"][int(rng.integers(3))]
        out.append(("attribute", template.format(c=obj.colour, s=obj.shape)))
    else:
        out.append(("plain", ["the {s}", "{s}"][int(rng.integers(2))].format(s=obj.shape)))
    for anchor in scene:
        if anchor is obj or anchor.shape == obj.shape:
            continue
        rel = _relation(obj, anchor)
        if rel is None:
            continue
        rivals = [o for o in same_shape if _relation(o, anchor) == rel]
        if not rivals:
            out.append(("relation", f"the {obj.shape} {rel} {_describe(anchor, scene)}"))
            break
    return out


def _scene(rng: np.random.Generator, n_objects: int, h: int, w: int, min_visible: float) -> list[_Object]:
    from pycocotools import mask as mask_utils

    # Pick distinct (shape, colour) pairs, favouring a same-shape pair so attribute
    # expressions are common.
    pairs: list[tuple[str, str]] = []
    colours = list(COLOURS)
    while len(pairs) < n_objects:
        if pairs and rng.random() < 0.5:
            shape = pairs[int(rng.integers(len(pairs)))][0]
        else:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = colours[int(rng.integers(len(colours)))]
        if (shape, colour) not in pairs:
            pairs.append((shape, colour))
    objects: list[_Object] = []
    for shape, colour in pairs:
        for _attempt in range(50):
            r = float(rng.uniform(0.09, 0.19) * min(h, w))
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            angle = float(rng.uniform(-0.35, 0.35))
            polygon = _polygon(shape, cx, cy, r, angle)
            rle = mask_utils.frPyObjects([polygon], h, w)
            mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            candidate = _Object(shape, colour, cx, cy, r, angle, polygon, mask)
            if _visible_enough(objects + [candidate], min_visible):
                objects.append(candidate)
                break
    covered = np.zeros((h, w), dtype=bool)
    for obj in reversed(objects):  # later objects are drawn on top
        obj.visible = obj.mask & ~covered
        covered |= obj.mask
    return objects


def _visible_enough(objects: list[_Object], min_visible: float) -> bool:
    covered = np.zeros_like(objects[0].mask)
    for obj in reversed(objects):
        if (obj.mask & ~covered).sum() < min_visible * obj.mask.sum():
            return False
        covered |= obj.mask
    return True


def _render(objects: list[_Object], rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([200, 200, 195]) + rng.integers(-15, 16, size=3)
    image = np.empty((h, w, 3))
    image[...] = base  # in place, each step: the same values as before, a third faster
    image += rng.normal(0, 4, size=(h, w, 3))
    for obj in objects:
        colour = np.array(COLOURS[obj.colour]) + rng.integers(-12, 13, size=3)
        image[obj.mask] = colour + rng.normal(0, 3, size=(int(obj.mask.sum()), 3))
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def generate(root: Path, config: ShapesConfig = ShapesConfig()) -> dict[str, Any]:
    """Write RefShapes under ``root``; returns the manifest."""
    root = Path(root)
    image_dir = root / "images" / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / NAME).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(config.seed)
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    category_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    split_of_image: dict[int, str] = {}
    kind_counts = {split: dict.fromkeys(KINDS, 0) for split in SPLITS}
    image_id = ann_id = ref_id = sent_id = 0

    for split in SPLITS:
        lo, hi = OBJECTS_PER_SCENE[split]
        for _ in range(config.images.get(split, 0)):
            image_id += 1
            h, w = config.sizes[int(rng.integers(len(config.sizes)))]
            objects = _scene(rng, int(rng.integers(lo, hi + 1)), h, w, config.min_visible)
            file_name = f"shapes_{image_id:06d}.jpg"
            Image.fromarray(_render(objects, rng, h, w)).save(image_dir / file_name, quality=92)
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            split_of_image[image_id] = split
            for obj in objects:
                ann_id += 1
                occluded = bool((obj.mask & ~obj.visible).any())
                segmentation: Any = encode(obj.visible) if occluded else [obj.polygon]
                rle = segmentation_to_rle(segmentation, h, w, "generated annotation")
                x0, y0, bw, bh = _bbox(obj.visible)
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": category_id[obj.shape],
                    "segmentation": segmentation, "area": area(rle),
                    "bbox": [x0, y0, bw, bh], "iscrowd": 0,
                    "attributes": {"colour": obj.colour}})
                candidates = _expressions(obj, objects, rng)
                order = rng.permutation(len(candidates))
                sentences = []
                for k in order[: 1 + int(rng.integers(2))]:
                    kind, text = candidates[int(k)]
                    sent_id += 1
                    kind_counts[split][kind] += 1
                    sentences.append({"sent_id": sent_id, "raw": text, "sent": text,
                                      "tokens": text.split(), "kind": kind})
                ref_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
                             "category_id": category_id[obj.shape], "split": split,
                             "file_name": f"shapes_{image_id:06d}_{ann_id}.jpg",
                             "sent_ids": [s["sent_id"] for s in sentences],
                             "sentences": sentences})

    instances = {"info": {"description": "RefShapes (synthetic)", "version": GENERATOR_VERSION},
                 "images": images, "annotations": annotations, "categories": categories}
    _write_json(root / NAME / "instances.json", instances)
    with open(root / NAME / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=4)
    for split in SPLITS:
        ids = {i for i, s in split_of_image.items() if s == split}
        _write_json(root / "annotations" / f"instances_{split}.json", {
            "info": instances["info"], "categories": categories,
            "images": [img for img in images if img["id"] in ids],
            "annotations": [a for a in annotations if a["image_id"] in ids]})
    manifest = {"generator": "refbench.data.shapes", "version": GENERATOR_VERSION,
                "config": asdict(config), "images": len(images), "annotations": len(annotations),
                "sentences": sent_id, "kinds": kind_counts}
    _write_json(root / NAME / "manifest.json", manifest)
    return manifest


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, separators=(",", ":")))  # dump() writes in small pieces: slower


def make(root: Path, seed: int = 0) -> dict[str, Any]:
    """The dataset plugin's generator entry: RefShapes with default sizes."""
    return generate(root, ShapesConfig(seed=seed))
