"""Reading image files as RGB uint8 arrays in their displayed orientation."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DatasetError

ORIENTATION = 0x0112  # the EXIF tag; 5-8 turn the image by 90 degrees
_TRUNCATED = threading.Lock()
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# the files detector reads as images: predict's folders and globs, and the image folders of YOLO and Open Images
# exports (the formats PIL decodes)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


def read_image(path: str | Path, bit_depth: int = 16, draft: int | None = None,
               on_truncated: Callable[[str], None] | None = None) -> np.ndarray:
    """Decode `path` into an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images all come back as 8-bit RGB. A 16-bit
    (or 32-bit integer) grayscale image is scaled by one fixed rule, its `bit_depth` (data.bit_depth: 16, or
    12 for a 12-bit camera's files), never by its own maximum, so every image of a dataset maps alike; a
    value above 2**bit_depth - 1, a negative one or a floating-point image is a DatasetError.
    A truncated file that PIL can still decode (every viewer shows it; its missing end is grey) is read; see
    `decode_check`; `on_truncated` is then called with what is wrong. Raises DatasetError naming the file when it is missing, not an image, undecodable, or
    larger than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS). With `draft`, a JPEG is decoded at
    the smallest of its built-in reduced scales whose sides stay at least `draft` pixels (for thumbnails).
    """
    with decoding(path):
        try:
            return _decode(path, bit_depth, draft)
        except OSError as e:
            if "truncated" not in str(e):
                raise
            with _truncated_allowed():
                image = _decode(path, bit_depth, draft)
            if on_truncated is not None:
                on_truncated(_truncated_note(e))
            return image


def decode_check(path: str | Path) -> str | None:
    """None when `path` decodes whole; what is wrong when it decodes only as a truncated file; a DatasetError
    when it cannot be decoded at all."""
    with decoding(path):
        try:
            _decode(path, 16, None)
            return None
        except OSError as e:
            if "truncated" not in str(e):
                raise
            with _truncated_allowed():
                _decode(path, 16, None)
            return _truncated_note(e)


def _truncated_note(e: OSError) -> str:
    return f"truncated ({e}): used as PIL decodes it, the missing part grey"


def _decode(path: str | Path, bit_depth: int, draft: int | None) -> np.ndarray:
    with Image.open(path) as img:
        if draft is not None:
            img.draft("RGB", (draft, draft))
        img.load()
        img = ImageOps.exif_transpose(img)
        return np.array(_to_rgb_array(img, bit_depth, path))


@contextlib.contextmanager
def _truncated_allowed() -> Iterator[None]:
    """PIL's switch for truncated files is a module global: set it for one decode at a time."""
    with _TRUNCATED:
        before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of `path` as shown, EXIF orientation applied (what read_image returns; what YOLO's and
    Open Images' relative boxes are fractions of), read from its header; errors as read_image's."""
    with decoding(path):
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
            return (height, width) if turned else (width, height)


@contextlib.contextmanager
def decoding(path: str | Path) -> Iterator[None]:
    """Turn what PIL raises for a missing, damaged, foreign or oversized image into one DatasetError."""
    try:
        yield
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; check `file_name` and the images folder") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: too large to decode safely ({e}); resize it, or raise "
                           "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e}); re-export or remove this file") from None


def _to_rgb_array(img: Image.Image, bit_depth: int, path: str | Path) -> np.ndarray:
    if img.mode == "F":
        raise DatasetError(f"{path}: a floating-point image; save it as 8- or 16-bit (PNG or TIFF)")
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 2.0 ** bit_depth - 1
        low, high = arr.min(initial=0), arr.max(initial=0)
        if low < 0 or high > top:
            raise DatasetError(f"{path}: pixel values {low:g}..{high:g} do not fit data.bit_depth {bit_depth} "
                               f"(0..{top:g}); set data.bit_depth to the bits the camera records (16 for full "
                               "16-bit data)")
        gray = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)
