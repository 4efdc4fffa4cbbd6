"""What every reader of `detector convert` makes of a file: images with their boxes, checked alike.

An image name from an annotation file is a path below the dataset's folder: `../` and absolute names are
refused (as load_coco refuses them), Windows backslashes are separators. A box is finite, inside-out boxes
are refused, and an image's size is positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DatasetError


@dataclass(frozen=True)
class Box:
    label: str
    xyxy: tuple[float, float, float, float]
    crowd: bool = False  # one box around a group of objects (Open Images' IsGroupOf): COCO's iscrowd


@dataclass(frozen=True)
class Labelled:
    """One image of a converted dataset: its file, size and boxes."""

    image: Path
    width: int
    height: int
    boxes: list[Box]


@dataclass
class Converted:
    """A converted dataset: its images, its class names (in the format's order, else sorted) and what the
    reader changed or left out on the way, to be said to the user."""

    images: list[Labelled]
    classes: list[str]
    warnings: list[str] = field(default_factory=list)
    category_ids: dict[str, int] | None = None  # the format's own class ids + 1 (YOLO's), else 1.. in order


def image_in(folder: Path, name: str, root: Path, where: str) -> Path:
    """`folder`/`name` for an image named in an annotation file at `where`; refused when the name is absolute
    or leads out of `root` (the dataset's folder), which would read files outside the dataset."""
    text = str(name).strip()
    pure = PurePosixPath(text.replace("\\", "/"))
    if not text or pure.is_absolute() or PureWindowsPath(text).drive:
        raise DatasetError(f"{where}: image name {text!r} is empty or absolute; write it relative to the images "
                           f"folder ({folder}), or pass --images-dir")
    path = Path(folder, *pure.parts)
    base = root.resolve()
    if base != path.resolve() and base not in path.resolve().parents:
        raise DatasetError(f"{where}: image name {text!r} leads out of the dataset's folder {root}; move the image "
                           "into it, or pass --images-dir the folder that holds the images")
    return path


def checked_box(label: str, xyxy: tuple[float, ...], where: str, crowd: bool = False) -> Box:
    """A Box, or a DatasetError naming `where` when a corner is not a finite number or the box is inside out."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DatasetError(f"{where}: box {label!r} has a corner that is not a number ({x0}, {y0}, {x1}, {y1}); "
                           "fix or delete it")
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(f"{where}: box {label!r} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no area or is inside out "
                           "(xmax <= xmin or ymax <= ymin); fix or delete it")
    return Box(label, (x0, y0, x1, y1), crowd)


def checked_size(width: object, height: object, where: str) -> tuple[int, int]:
    """An image size written in an annotation file, as two positive integers."""
    try:
        w, h = float(width), float(height)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        w = h = float("nan")
    if not (math.isfinite(w) and math.isfinite(h) and w >= 1 and h >= 1 and w == int(w) and h == int(h)):
        raise DatasetError(f"{where}: image size {width!r} x {height!r} is not two positive whole numbers; fix "
                           "the width and height")
    return int(w), int(h)


def points_box(label: str, points: list, where: str) -> Box:
    """The bounding box of a polygon's (or polyline's) [x, y] points."""
    try:
        xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    except (TypeError, ValueError, IndexError):
        raise DatasetError(f"{where}: shape {label!r} has points that are not [x, y] numbers") from None
    if not xs:
        raise DatasetError(f"{where}: shape {label!r} has no points")
    return checked_box(label, (min(xs), min(ys), max(xs), max(ys)), where)
