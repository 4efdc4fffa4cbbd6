"""Reading image files as RGB uint8 arrays in their displayed orientation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DatasetError

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def read_image(path: str | Path) -> np.ndarray:
    """Decode `path` into an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images all come back as 8-bit RGB.
    Raises DatasetError naming the file when it is missing, truncated, not an image, or larger than PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS).
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.array(_to_rgb_array(img))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; check `file_name` and the images folder") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: too large to decode safely ({e}); resize it, or raise "
                           "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e}); re-export or remove this file") from None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)
