"""Mask <-> COCO RLE conversions, all through pycocotools so there is one definition of each."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from refbench.errors import UserError


def _text_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A binary H x W mask as compressed RLE with text counts (JSON-safe)."""
    # a bool array viewed as uint8 (the same bytes): one column-major copy, not two
    return _text_rle(mask_utils.encode(np.asfortranarray(mask).view(np.uint8)
                                       if mask.dtype == bool else np.asfortranarray(mask.astype(np.uint8))))


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Compressed RLE to a boolean H x W mask."""
    coco = _coco_rle(rle)
    return mask_utils.decode(coco).astype(bool)


def area(rle: dict[str, Any]) -> int:
    coco = _coco_rle(rle)
    return int(mask_utils.area(coco))


def intersection_area(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Pixels in both masks, counted on their runs (no H x W array): what a binary
    prediction's score needs, exactly ``count_nonzero(decode(a) & decode(b))``."""
    if list(a["size"]) != list(b["size"]):
        raise ValueError(f"prediction shape {tuple(a['size'])} differs from ground truth {tuple(b['size'])}")
    return int(mask_utils.area(mask_utils.merge([_coco_rle(a), _coco_rle(b)], intersect=True)))


def bbox(rle: dict[str, Any]) -> tuple[float, float, float, float]:
    """Tight box [x, y, w, h] of the mask."""
    coco = _coco_rle(rle)
    return tuple(float(v) for v in mask_utils.toBbox(coco))  # type: ignore[return-value]


class BadSegmentation(UserError):
    """A segmentation that does not describe a region of its image; ``what`` says why."""

    def __init__(self, what: str, where: str = ""):
        super().__init__(f"{where}: segmentation {what}" if where else f"segmentation {what}")
        self.what = what


# How far outside the image (a fraction of its side) a vertex may sit. Objects cut by the border
# have vertices on or just past it (2% of RefShapes' polygons, up to 2.2% of the side); the
# rasteriser clips them, as COCO's does. A vertex further out means coordinates in another scale.
POLYGON_MARGIN = 0.1


def _polygon_problem(polygon: Any, index: int, height: int, width: int) -> str | None:
    if not isinstance(polygon, (list, tuple)):
        return f"polygon {index} is a {type(polygon).__name__}, not a list of coordinates"
    if len(polygon) < 6 or len(polygon) % 2:
        return (f"polygon {index} has {len(polygon)} coordinates; a polygon needs an even "
                f"number, at least 6 (x, y of 3 or more points)")
    # exact types first (a plain list of floats: every record of a real file), the rule after
    if not (all(type(v) is float or type(v) is int for v in polygon)
            or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)):
        return f"polygon {index} holds values that are not numbers"
    values = np.array(polygon, dtype=float)
    if not np.isfinite(values).all():
        return f"polygon {index} has coordinates that are not finite (NaN or infinity)"
    # contiguous copies, as np.asarray of the slices gave: the dot products below sum alike
    xs, ys = np.ascontiguousarray(values[0::2]), np.ascontiguousarray(values[1::2])
    x_lo, x_hi, y_lo, y_hi = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    mx, my = POLYGON_MARGIN * width, POLYGON_MARGIN * height
    if x_lo < -mx or y_lo < -my or x_hi > width + mx or y_hi > height + my:
        return (f"polygon {index} reaches ({x_lo:g}..{x_hi:g}, {y_lo:g}..{y_hi:g}), "
                f"outside the {width}x{height} image")
    # np.roll(a, -1), without its generality's cost: the same values, so the same sums
    shifted_x, shifted_y = np.concatenate((xs[1:], xs[:1])), np.concatenate((ys[1:], ys[:1]))
    if abs(np.dot(xs, shifted_y) - np.dot(ys, shifted_x)) / 2 == 0:
        return f"polygon {index} has zero area (its points lie on one line)"
    return None


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a compressed RLE string (COCO's maskApi ``rleFrString``): 5 bits a
    character, a continuation bit, a sign bit on the last, runs after the second stored as the
    difference to the run two before. Decoded here so a malformed string is caught before
    pycocotools reads it without checks."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the string ends inside a run")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} is not an RLE character")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_problem(rle: dict[str, Any], height: int, width: int) -> str | None:
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return f"is an RLE without a valid size [height, width] (size is {size!r})"
    if list(size) != [height, width]:
        return f"is an RLE of size {list(size)}, but its image is {height}x{width} (height x width)"
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        try:
            runs = rle_string_counts(counts)
        except ValueError as error:
            return f"is a compressed RLE whose counts are malformed ({error})"
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = counts
    else:
        return "is an RLE whose counts are neither a compressed string nor a list of whole numbers"
    if any(r < 0 for r in runs):
        return "is an RLE with a negative run length"
    if sum(runs) != height * width:
        return f"is an RLE whose runs cover {sum(runs)} pixels, not the image's {height * width}"
    return None


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str = "") -> dict[str, Any]:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as one merged RLE,
    checked first: polygons of an even count of at least 6 finite coordinates, inside the image,
    of positive area; an RLE of the image's size whose runs cover it exactly. Anything else is a
    ``BadSegmentation``, never a silently empty or wrong mask.

    Polygons of one object are merged (a union), never summed: the REFER loaders' ``np.sum``
    over polygon masks yields values above 1 where polygons overlap.
    """
    if segmentation is None or (isinstance(segmentation, (list, dict)) and len(segmentation) == 0):
        raise BadSegmentation("is empty", where)
    if isinstance(segmentation, (list, tuple)):
        for index, polygon in enumerate(segmentation):
            if problem := _polygon_problem(polygon, index, height, width):
                raise BadSegmentation(problem, where)
        polygons = [[float(v) for v in p] for p in segmentation]
        merged = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        if problem := _rle_problem(segmentation, height, width):
            raise BadSegmentation(problem, where)
        if isinstance(segmentation["counts"], list):
            merged = mask_utils.frPyObjects(dict(segmentation), height, width)
        else:
            merged = {"size": [height, width], "counts": segmentation["counts"]}
    else:
        raise BadSegmentation(f"is a {type(segmentation).__name__}, not polygons or an RLE", where)
    return _text_rle(merged)
