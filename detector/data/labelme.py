"""LabelMe JSON into images with boxes, for `detector convert`.

One .json per image: `imagePath` (relative to the .json's folder, Windows backslashes allowed), `imageWidth`,
`imageHeight` and `shapes`. Rectangles, polygons (LabelMe's default shape) and masks become the box around
their points, circles the box around the circle; lines, line strips and points are not regions and are left
out, counted in a warning.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ..errors import DatasetError
from .labelled import Box, Converted, Labelled, checked_box, checked_size, image_in, points_box

REGIONS = ("rectangle", "polygon", "circle", "mask")


def read_labelme(files: list[Path], images_dir: Path | None, root: Path) -> Converted:
    """The images of LabelMe `files`, found relative to each file's folder (or `images_dir`) within `root`."""
    left_out: Counter[str] = Counter()
    images = [_image(f, images_dir or f.parent, images_dir or root, left_out) for f in files]
    warnings = []
    if left_out:
        warnings.append(f"{sum(left_out.values())} LabelMe shape(s) that are not regions were left out ("
                        + ", ".join(f"{n} {kind}" for kind, n in left_out.most_common()) + ")")
    return Converted(images, sorted({b.label for im in images for b in im.boxes}), warnings)


def _image(path: Path, folder: Path, root: Path, left_out: Counter) -> Labelled:
    doc = _load(path)
    where = str(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes", []), list) or "imagePath" not in doc:
        raise DatasetError(f"{where}: not a LabelMe file (a JSON object with imagePath, imageWidth, imageHeight "
                           "and a list of shapes)")
    width, height = checked_size(doc.get("imageWidth"), doc.get("imageHeight"), f"{where}: imageWidth/imageHeight")
    boxes = []
    for k, shape in enumerate(doc.get("shapes", []), start=1):
        kind = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else None
        if kind in REGIONS:
            boxes.append(_box(shape, kind, f"{where}: shape {k}"))
        else:
            left_out[str(kind)] += 1
    return Labelled(image_in(folder, str(doc["imagePath"]), root, where), width, height, boxes)


def _box(shape: dict, kind: str, where: str) -> Box:
    label, points = str(shape.get("label") or ""), shape.get("points") or []
    if not label:
        raise DatasetError(f"{where}: has no label")
    if kind != "circle":
        return points_box(label, points, where)
    try:
        (cx, cy), (ex, ey) = [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError):
        raise DatasetError(f"{where}: a circle needs two [x, y] points, its centre and one on its edge") from None
    r = math.hypot(ex - cx, ey - cy)
    return checked_box(label, (cx - r, cy - r, cx + r, cy + r), where)


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path}: not a readable LabelMe JSON file ({type(e).__name__}: {e})") from None
