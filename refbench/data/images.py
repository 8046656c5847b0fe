"""Image loading, with the missing-file case turned into a user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from refbench.errors import UserError


def load_rgb(path: Path, expected_hw: tuple[int, int] | None = None, sample_id: str = "") -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB."""
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    except FileNotFoundError:
        raise UserError(f"image {path} (sample {sample_id}) is missing: check the image folder "
                        f"(--image-dir) or restore the file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {path} (sample {sample_id}) cannot be read ({error}): "
                        f"restore the file") from None
    if expected_hw is not None and array.shape[:2] != tuple(expected_hw):
        raise UserError(f"image {path} is {array.shape[1]}x{array.shape[0]} but the annotations "
                        f"say {expected_hw[1]}x{expected_hw[0]}: images and annotations do not match")
    return array


def check_images_exist(paths: list[Path]) -> None:
    """Fail before any computation when images are missing, naming the first few."""
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{len(missing)} image file(s) missing: {shown}{more}; check the image "
                        f"folder (--image-dir) or restore the files")
