"""COCO annotation files: loading (validated by checks.py) into a CocoIndex of image records and a label map.

Boxes inside the package are xyxy pixels (float32); COCO files are xywh. The conversion happens here, once.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np

from ..errors import DatasetError
from .copies import fingerprints
from .records import ImageRecord, LabelMap
from .checks import (TRUNCATED, UNUSABLE, Problem, check_box, check_categories, check_files, check_structure,
                     format_problems, is_int)



@dataclass
class CocoIndex:
    """A validated annotation file: images with their boxes, categories, label map and findings."""

    path: Path
    images_dir: Path
    images: list[ImageRecord]
    categories: list[dict]
    label_map: LabelMap
    problems: list[Problem] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def fingerprints(self) -> np.ndarray:
        """Each image's content fingerprint (data/copies.py), in `images` order; read once per index."""
        return fingerprints(r.path for r in self.images)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def file_warnings(self) -> list[str]:
        """One line per kind of damaged image file: those left out (they cannot be decoded) and those used
        truncated, counted and named (the first few), so that no image is dropped silently."""
        lines = []
        for kind, what in ((UNUSABLE, "left out: they cannot be decoded"), (TRUNCATED, "used truncated")):
            found = [p for p in self.problems if p.kind == kind]
            if found:
                names = ", ".join(p.field for p in found[:3]) + (", ..." if len(found) > 3 else "")
                lines.append(f"{self.path}: {len(found)} image(s) {what} ({names}); re-export them, or see "
                             f"`detector check-data {self.path}`")
        return lines

    def subset(self, image_ids: Iterable[int]) -> "CocoIndex":
        wanted = set(image_ids)
        return replace(self, images=[r for r in self.images if r.id in wanted])

    def labels(self, record: ImageRecord) -> np.ndarray:
        return np.array([self.label_map.label(int(c)) for c in record.category_ids], dtype=np.int64)

    def to_coco(self) -> dict[str, Any]:
        """The ground truth of these images as a COCO dict (original JSON boxes), for evaluation.

        Annotation ids are renumbered 1..N: COCO evaluators use id 0 as "unmatched", so a box whose id is 0
        (Roboflow exports start at 0) would silently count as missed.
        """
        anns = [a for r in self.images for a in r.annotations]
        return {
            "images": [{"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height}
                       for r in self.images],
            "annotations": [{**a, "id": i + 1} for i, a in enumerate(anns)],
            "categories": [{"id": c, "name": n} for c, n in zip(self.label_map.category_ids, self.label_map.names)],
        }


def load_coco(
    annotations: str | Path,
    images_dir: str | Path | None = None,
    *,
    keep_empty: bool = True,
    drop_placeholder_categories: bool = True,
    strict_boxes: bool = False,
    check_images: bool = True,
    label_map: LabelMap | None = None,
    raise_on_error: bool = True,
) -> CocoIndex:
    """Read and validate a COCO annotation file (official COCO or a Roboflow export).

    `images_dir` is the folder `file_name` is relative to (default: the annotation file's folder).
    Pass the training split's `label_map` when loading a validation split so both share labels.
    Raises DatasetError listing every error found unless `raise_on_error` is False.
    """
    path = Path(annotations)
    return coco_index(_read_json(path), path, images_dir, keep_empty=keep_empty,
                      drop_placeholder_categories=drop_placeholder_categories, strict_boxes=strict_boxes,
                      check_images=check_images, label_map=label_map, raise_on_error=raise_on_error)


def coco_index(raw: Any, path: Path, images_dir: str | Path | None = None, *, keep_empty: bool = True,
               drop_placeholder_categories: bool = True, strict_boxes: bool = False, check_images: bool = True,
               label_map: LabelMap | None = None, raise_on_error: bool = True) -> CocoIndex:
    """load_coco of a COCO document already read (or about to be written) as `path`."""
    root = Path(images_dir) if images_dir is not None else path.parent
    problems = check_structure(raw, path)
    fatal = [p for p in problems if p.severity == "error"]
    if fatal:
        return _finish(_empty_index(path, root, raw), fatal, raise_on_error)
    categories = raw["categories"]
    lmap = label_map or build_label_map(categories, raw["annotations"], drop_placeholder_categories)
    problems += check_categories(categories, lmap, path, label_map is not None)
    images, more = _collect_images(raw, path, root, lmap, strict_boxes, check_images)
    problems += more
    if not keep_empty:
        images = [r for r in images if r.annotations]
    index = CocoIndex(path, root, images, categories, lmap, problems, raw.get("info") or {})
    return _finish(index, problems, raise_on_error)


def build_label_map(categories: list[dict], annotations: list[dict], drop_placeholder: bool = True) -> LabelMap:
    """Contiguous labels in category-id order; a placeholder category gets none when `drop_placeholder`.

    A placeholder is a category that no annotation uses and whose name is another category's
    supercategory (Roboflow exports category 0 this way).
    """
    used = {a.get("category_id") for a in annotations}
    supers = {c.get("supercategory") for c in categories}
    kept = [
        c for c in sorted(categories, key=lambda c: c["id"])
        if not (drop_placeholder and c["id"] not in used and c["name"] in supers)
    ]
    return LabelMap(tuple(int(c["id"]) for c in kept), tuple(str(c["name"]) for c in kept))


def _finish(index: CocoIndex, problems: list[Problem], raise_on_error: bool) -> CocoIndex:
    index.problems = problems
    errors = [p for p in problems if p.severity == "error"]
    if errors and raise_on_error:
        raise DatasetError(format_problems(index.path, errors))
    return index


def _empty_index(path: Path, root: Path, raw: Any) -> CocoIndex:
    return CocoIndex(path, root, [], [], LabelMap((), ()), [], {})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found; check data.*.annotations in the config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e}); check its permissions/encoding") from None
    try:
        raw = json.loads(text)
    except RecursionError:
        raise DatasetError(f"{path}: nested deeper than any COCO file (Python's JSON reader gave up); "
                           "re-export the annotations") from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); re-export the annotations"
        ) from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with images, annotations, categories")
    return raw


def _collect_images(raw, path, root, lmap, strict, check_images) -> tuple[list[ImageRecord], list[Problem]]:
    problems: list[Problem] = []
    known_cats = {int(c["id"]) for c in raw["categories"]}
    by_image: dict[int, list[dict]] = {}
    image_ids = {im["id"] for im in raw["images"]}
    for i, ann in enumerate(raw["annotations"]):
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["image_id"] not in image_ids:
            problems.append(Problem(str(path), f"{where}.image_id", f"unknown image id {ann['image_id']}",
                                    "point it at an image in 'images' or remove the annotation"))
            continue
        if ann["category_id"] not in known_cats:
            problems.append(Problem(str(path), f"{where}.category_id", f"unknown category id {ann['category_id']}",
                                    "add the category to 'categories' or fix the id"))
            continue
        if ann["category_id"] not in lmap.category_ids:
            problems.append(Problem(str(path), f"{where}.category_id",
                                    f"category {ann['category_id']} has no label in the training split",
                                    "use the same categories in every split"))
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = []
    for j, im in enumerate(raw["images"]):
        rec, found = _image_record(im, j, by_image.get(im["id"], []), path, root, strict)
        problems += found
        if rec is not None:
            records.append(rec)
    if not raw["images"]:
        problems.append(Problem(str(path), "images", "the file lists no images", "export the split with its images"))
    if check_images:
        found, unusable = check_files(records, path)
        problems += found
        records = [r for r in records if r.id not in unusable]
        if unusable and not records:
            problems.append(Problem(str(path), "images", "no image file can be used", "fix the images folder"))
    return records, problems


def _image_record(im, j, anns, path, root, strict) -> tuple[ImageRecord | None, list[Problem]]:
    where = f"images[{j}] (id {im['id']})"
    problems = []
    name = str(im["file_name"])
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or os.path.isabs(name):
        return None, [Problem(str(path), f"{where}.file_name", f"'{name}' escapes the dataset folder",
                              "use a path relative to the images folder, without '..'")]
    if not (is_int(im["width"]) and is_int(im["height"]) and im["width"] > 0 and im["height"] > 0):
        return None, [Problem(str(path), f"{where}.width/height", f"invalid size {im['width']}x{im['height']}",
                              "use the image's pixel size")]
    w, h = int(im["width"]), int(im["height"])
    boxes, cats, valid = [], [], []
    for ann in anns:
        box, found = check_box(ann, w, h, path, strict)
        problems += found
        if box is None:
            continue
        valid.append(ann)
        if not ann.get("iscrowd", 0):
            boxes.append(box)
            cats.append(int(ann["category_id"]))
    rec = ImageRecord(
        id=im["id"], file_name=name, path=root / pure, width=w, height=h,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        category_ids=np.asarray(cats, dtype=np.int64),
        annotations=[_eval_annotation(a) for a in valid], extra=dict(im),
    )
    return rec, problems


def _eval_annotation(ann: dict) -> dict:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return {"id": ann["id"], "image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)), "iscrowd": int(ann.get("iscrowd", 0))}
