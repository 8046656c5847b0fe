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
    return _text_rle(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Compressed RLE to a boolean H x W mask."""
    coco = _coco_rle(rle)
    return mask_utils.decode(coco).astype(bool)


def area(rle: dict[str, Any]) -> int:
    coco = _coco_rle(rle)
    return int(mask_utils.area(coco))


def bbox(rle: dict[str, Any]) -> tuple[float, float, float, float]:
    """Tight box [x, y, w, h] of the mask."""
    coco = _coco_rle(rle)
    return tuple(float(v) for v in mask_utils.toBbox(coco))  # type: ignore[return-value]


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as one merged RLE.

    Polygons of one object are merged (a union), never summed: the REFER loaders' ``np.sum``
    over polygon masks yields values above 1 where polygons overlap.
    """
    if segmentation is None or (isinstance(segmentation, list) and len(segmentation) == 0):
        raise UserError(f"{where} has an empty segmentation: fix or drop that annotation in the "
                        f"instances file")
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                raise UserError(f"{where} has no polygon with 3 or more points: fix or drop it")
            rles = mask_utils.frPyObjects(polygons, height, width)
            merged = mask_utils.merge(rles)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            merged = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            merged = dict(segmentation)
            if isinstance(merged["counts"], str):
                merged["counts"] = merged["counts"].encode("ascii")
        else:
            raise UserError(f"{where}: unrecognised segmentation of type {type(segmentation).__name__}")
    except UserError:
        raise
    except Exception as error:  # pycocotools raises bare Exceptions on malformed input
        raise UserError(f"{where}: malformed segmentation ({error})") from None
    return _text_rle(merged)
