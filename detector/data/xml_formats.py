"""Pascal VOC and CVAT XML into images with boxes, for `detector convert`.

Read here rather than by a general converter so that every problem names its file, its element and the
fix: a VOC folder holds one .xml per image (`filename`, `size`, `object`s with a `bndbox`); a CVAT 'for
images 1.1' file holds an `<image>` per image with `<box>`es (rotated ones by their bounding box), and
polygons, masks and ellipses become the box around them. Shapes that are not regions (polylines, points,
cuboids, skeletons, tags) are left out and counted. An image listed twice in a CVAT file becomes one image
with the boxes of both entries.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as et
from collections import Counter
from pathlib import Path

from ..errors import DatasetError
from .labelled import Box, Converted, Labelled, checked_box, checked_size, image_in, points_box

REGIONS = ("box", "polygon", "mask", "ellipse")


def read_voc(files: list[Path], folder: Path) -> Converted:
    """One Labelled per VOC file; images are `folder`/filename."""
    images = [_voc_image(_parse(f, "Pascal VOC"), f, folder) for f in files]
    return Converted(images, sorted({b.label for im in images for b in im.boxes}))


def _voc_image(root: et.Element, path: Path, folder: Path) -> Labelled:
    where = str(path)
    name = root.findtext("filename")
    if root.tag != "annotation" or name is None:
        raise DatasetError(f"{where}: not a Pascal VOC file (an <annotation> with <filename>, <size> and <object>s)")
    width, height = checked_size(root.findtext("size/width"), root.findtext("size/height"), f"{where}: <size>")
    boxes = []
    for k, node in enumerate(root.iter("object"), start=1):
        label, box = (node.findtext("name") or "").strip(), node.find("bndbox")
        at = f"{where}: <object> {k}"
        if not label or box is None:
            raise DatasetError(f"{at}: needs a <name> and a <bndbox>")
        boxes.append(checked_box(label, tuple(_number(box.findtext(c), at, c) for c in ("xmin", "ymin", "xmax", "ymax")),
                                 at))
    return Labelled(image_in(folder, name, folder, where), width, height, boxes)


def read_cvat(source: Path, folder: Path) -> Converted:
    """The images of a CVAT for images 1.1 XML file; images are `folder`/name."""
    root = _parse(source, "CVAT")
    nodes = list(root.iter("image"))
    if not nodes and root.find(".//track") is not None:
        raise DatasetError(f"{source}: a CVAT video export (<track>s, no <image>s); export the task as 'CVAT for "
                           "images 1.1'")
    merged: dict[Path, Labelled] = {}
    left_out: Counter[str] = Counter()
    twice = []
    for k, node in enumerate(nodes, start=1):
        where = f"{source}: <image> {k} ({node.get('name')!r})"
        image = _cvat_image(node, folder, where, left_out)
        if image.image in merged:
            first = merged[image.image]
            if (first.width, first.height) != (image.width, image.height):
                raise DatasetError(f"{where}: listed twice with two sizes; keep one entry")
            twice.append(node.get("name"))
            image = Labelled(image.image, image.width, image.height, first.boxes + image.boxes)
        merged[image.image] = image
    images = list(merged.values())
    warnings = [f"{len(twice)} image(s) listed twice in {source} (e.g. {twice[0]}): their boxes were joined"] if twice else []
    if left_out:
        warnings.append(f"{sum(left_out.values())} shape(s) that are not regions were left out of {source} ("
                        + ", ".join(f"{n} {kind}" for kind, n in left_out.most_common()) + ")")
    return Converted(images, sorted({b.label for im in images for b in im.boxes}), warnings)


def _cvat_image(node: et.Element, folder: Path, where: str, left_out: Counter) -> Labelled:
    width, height = checked_size(node.get("width"), node.get("height"), where)
    boxes = []
    for shape in node:
        if shape.tag in REGIONS:
            boxes.append(_cvat_box(shape, f"{where} <{shape.tag}>"))
        else:
            left_out[shape.tag] += 1
    return Labelled(image_in(folder, node.get("name") or "", folder, where), width, height, boxes)


def _cvat_box(shape: et.Element, where: str) -> Box:
    label = shape.get("label") or ""
    if not label:
        raise DatasetError(f"{where}: has no label")
    get = lambda key: _number(shape.get(key), where, key)  # noqa: E731
    if shape.tag == "box":
        x0, y0, x1, y1 = (get(k) for k in ("xtl", "ytl", "xbr", "ybr"))
        angle = math.radians(float(shape.get("rotation") or 0))
        if angle:  # the box around the rotated rectangle
            cx, cy, c, s = (x0 + x1) / 2, (y0 + y1) / 2, abs(math.cos(angle)), abs(math.sin(angle))
            w, h = (x1 - x0) * c + (y1 - y0) * s, (x1 - x0) * s + (y1 - y0) * c
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        return checked_box(label, (x0, y0, x1, y1), where)
    if shape.tag == "ellipse":
        cx, cy, rx, ry = (get(k) for k in ("cx", "cy", "rx", "ry"))
        return checked_box(label, (cx - rx, cy - ry, cx + rx, cy + ry), where)
    if shape.tag == "mask":
        left, top, w, h = (get(k) for k in ("left", "top", "width", "height"))
        return checked_box(label, (left, top, left + w, top + h), where)
    points = [p.split(",") for p in (shape.get("points") or "").split(";") if p]
    return points_box(label, points, where)


def _number(text: str | None, where: str, field: str) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {field} {text!r} is not a number") from None


def _parse(path: Path, what: str) -> et.Element:
    try:
        return et.parse(path).getroot()
    except (OSError, et.ParseError) as e:
        hint = "export 'CVAT for images 1.1'" if what == "CVAT" else "re-export it"
        raise DatasetError(f"{path}: not a readable {what} XML file ({e}); {hint}") from None
