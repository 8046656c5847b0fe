"""Reading images as 8-bit RGB, whatever mode they are stored in.

``Image.convert("RGB")`` is right for 8-bit modes but clips the others: a 16-bit PNG becomes
all white. So each mode is converted by what its values mean:

- 8-bit modes (``L``, ``P``, ``PA``, ``LA``, ``RGBA``, ``CMYK``, ``YCbCr``, ``1``...): Pillow's
  conversion; alpha is dropped (the colour under it is kept), as torchvision and the original
  methods' loaders do;
- ``I;16`` (16-bit grey): scaled from 0..65535 to 0..255, rounded;
- ``I`` (32-bit integers, what 16-bit PNGs and TIFFs open as in some Pillow versions): scaled
  from 0..65535 when its values lie there, else refused (no scale can be guessed);
- ``F`` (32-bit float): values in 0..1 scaled by 255, values in 0..255 kept, else refused.

The decompression-bomb guard is refbench's own, with the pixel limit a setting
(``--max-image-pixels``), so a genuine huge image gets a one-line error naming the option
instead of Pillow's exception.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from refbench.errors import UserError, one_line

# Pillow's own default (its DecompressionBombWarning threshold).
DEFAULT_MAX_PIXELS = 89_478_485
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says of itself without being decoded."""

    width: int
    height: int
    mode: str
    format: str

    @property
    def bits(self) -> int:
        """Bits per channel as stored."""
        if self.mode in _SIXTEEN_BIT:
            return 16
        return {"1": 1, "I": 32, "F": 32}.get(self.mode, 8)

    @property
    def kind(self) -> str:
        """Mode and bit depth, as ``refbench data check`` tallies images: "RGB 8-bit"."""
        return f"{self.mode} {self.bits}-bit"


def _open(path: Path, sample_id: str) -> Image.Image:
    """Open lazily with Pillow's bomb check off (ours, with the option named, runs next)."""
    try:
        with _OPEN_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except FileNotFoundError:
        raise UserError(f"image {path}{_of(sample_id)} is missing: check the image folder "
                        f"(--image-dir) or restore the file") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"image {path}{_of(sample_id)} cannot be read ({one_line(error)}): "
                        f"restore the file") from None


def _of(sample_id: str) -> str:
    return f" (sample {sample_id})" if sample_id else ""


def _check_size(path: Path, image: Image.Image, expected_hw: tuple[int, int] | None,
                max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise UserError(f"image {path} is {width}x{height} ({width * height:,} pixels), over the "
                        f"limit of {max_pixels:,} that guards against decompression bombs: if it "
                        f"is genuine, raise the limit with --max-image-pixels {width * height}")
    if expected_hw is not None and (height, width) != tuple(expected_hw):
        raise UserError(f"image {path} is {width}x{height} but the annotations say "
                        f"{expected_hw[1]}x{expected_hw[0]}: images and annotations do not match")


def read_header(path: Path, expected_hw: tuple[int, int] | None = None, sample_id: str = "",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The image's size, mode and format from its header, checked against the annotations and
    the pixel limit: what can be known before any computation, for milliseconds an image."""
    with _open(path, sample_id) as image:
        _check_size(path, image, expected_hw, max_pixels)
        return ImageHeader(image.size[0], image.size[1], image.mode, image.format or "")


def to_rgb8(image: Image.Image, where: str = "image") -> np.ndarray:
    """``image`` as H x W x 3 uint8 RGB, each mode converted by what its values mean."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            finite = values[np.isfinite(values)]
            if finite.size != values.size or values.min() < 0 or values.max() > 255:
                raise UserError(f"{where} is a float image with values outside 0..255 (or not "
                                f"finite): convert it to 8-bit RGB")
            scale = 255.0 if values.max() <= 1.0 else 1.0
        else:
            if values.min() < 0 or values.max() > 65535:
                raise UserError(f"{where} is a 32-bit integer image with values "
                                f"{values.min():g}..{values.max():g}, outside 16-bit range: "
                                f"convert it to 8-bit RGB")
            scale = 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        return np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    except ValueError as error:
        raise UserError(f"{where} is in mode {mode}, which cannot be converted to RGB "
                        f"({one_line(error)}): convert it to 8-bit RGB") from None


def load_rgb(path: Path, expected_hw: tuple[int, int] | None = None, sample_id: str = "",
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB, checking its size before decoding it."""
    with _open(path, sample_id) as image:
        _check_size(path, image, expected_hw, max_pixels)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:  # truncated or damaged data
            raise UserError(f"image {path}{_of(sample_id)} cannot be decoded "
                            f"({one_line(error)}): restore the file") from None
        return to_rgb8(image, f"image {path}")


def check_images_exist(paths: list[Path]) -> None:
    """Fail before any computation when images are missing, naming the first few."""
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{len(missing)} image file(s) missing: {shown}{more}; check the image "
                        f"folder (--image-dir) or restore the files")
