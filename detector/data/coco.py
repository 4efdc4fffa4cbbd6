"""COCO annotation files: validation, the label map, and the training dataset.

Boxes inside the package are xyxy pixels (float32); COCO files are xywh. The conversion happens here, once.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torchvision.datasets import VisionDataset

from ..boxes import xywh_to_xyxy
from ..errors import DatasetError
from .images import read_image

REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
MAX_LISTED = 20


@dataclass(frozen=True)
class Problem:
    """One finding of the validation: where it is, what is wrong, how to fix it."""

    file: str
    field: str
    message: str
    fix: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}; {self.fix}"


@dataclass(frozen=True)
class LabelMap:
    """Dataset category ids <-> contiguous model labels 1..K (0 is background)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    def name(self, label: int) -> str:
        return self.names[label - 1]

    def to_dict(self) -> dict[str, list]:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "LabelMap":
        return cls(tuple(int(i) for i in d["category_ids"]), tuple(str(n) for n in d["names"]))


@dataclass
class ImageRecord:
    id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels, clipped to the image, crowd boxes excluded
    category_ids: np.ndarray  # (N,) int64, the dataset's own ids
    annotations: list[dict] = field(default_factory=list)  # raw JSON records, crowd included, for evaluation
    extra: dict[str, Any] = field(default_factory=dict)  # the raw image record


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

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

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
    root = Path(images_dir) if images_dir is not None else path.parent
    raw = _read_json(path)
    problems = _check_structure(raw, path)
    fatal = [p for p in problems if p.severity == "error"]
    if fatal:
        return _finish(_empty_index(path, root, raw), fatal, raise_on_error)
    categories = raw["categories"]
    lmap = label_map or build_label_map(categories, raw["annotations"], drop_placeholder_categories)
    problems += _check_categories(categories, lmap, path, label_map is not None)
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


def format_problems(path: Path, errors: list[Problem]) -> str:
    lines = [f"{path}: {len(errors)} problem(s) make this dataset unusable:"]
    lines += [f"  - {p}" for p in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more (run `detector check-data {path}` for all)")
    return "\n".join(lines)


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
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); re-export the annotations"
        ) from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with images, annotations, categories")
    return raw


def _check_structure(raw: dict[str, Any], path: Path) -> list[Problem]:
    out: list[Problem] = []
    for section, keys in REQUIRED.items():
        records = raw.get(section)
        if not isinstance(records, list):
            out.append(Problem(str(path), section, "missing or not a list", f"add a '{section}' list"))
            continue
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                out.append(Problem(str(path), f"{section}[{i}]", "is not an object", "fix the record"))
                continue
            missing = [k for k in keys if k not in rec]
            if missing:
                out.append(Problem(str(path), f"{section}[{i}]", f"missing key(s) {', '.join(missing)}",
                                   f"every {section[:-1]} needs {', '.join(keys)}"))
            elif not _is_int(rec["id"]):
                out.append(Problem(str(path), f"{section}[{i}].id", f"id {rec['id']!r} is not an integer",
                                   "use integer ids"))
            else:
                out += _check_types(rec, section, i, path)
        out += _duplicates(records, section, path)
    return out


_INT_FIELDS = {"annotations": ("image_id", "category_id")}
_STR_FIELDS = {"images": ("file_name",), "categories": ("name",)}


def _check_types(rec: dict, section: str, i: int, path: Path) -> list[Problem]:
    out = []
    for key in _INT_FIELDS.get(section, ()):
        if not _is_int(rec[key]):
            out.append(Problem(str(path), f"{section}[{i}].{key}", f"{rec[key]!r} is not an integer id",
                               f"give every {section[:-1]} an integer {key}"))
    for key in _STR_FIELDS.get(section, ()):
        if not isinstance(rec[key], str):
            out.append(Problem(str(path), f"{section}[{i}].{key}", f"{rec[key]!r} is not a string",
                               f"give every {section[:-1]} a {key} string"))
    return out


def _duplicates(records: Any, section: str, path: Path) -> list[Problem]:
    if not isinstance(records, list):
        return []
    seen: set = set()
    out = []
    for i, rec in enumerate(records):
        key = rec.get("id") if isinstance(rec, dict) else None
        if key is None or not _is_hashable(key):
            continue
        if key in seen:
            out.append(Problem(str(path), f"{section}[{i}].id", f"duplicate id {key}", "give every record a unique id"))
        seen.add(key)
    return out


def _check_categories(categories: list[dict], lmap: LabelMap, path: Path, shared: bool) -> list[Problem]:
    if not shared:
        if lmap.num_classes == 0:
            return [Problem(str(path), "categories", "no usable category", "add at least one category")]
        return []
    own = {int(c["id"]): str(c["name"]) for c in categories}
    out = []
    for cid, name in zip(lmap.category_ids, lmap.names):
        if cid in own and own[cid] != name:
            out.append(Problem(str(path), f"categories id {cid}",
                               f"named '{own[cid]}' here but '{name}' in the training split",
                               "use the same categories in every split"))
    return out


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
    if check_images:
        problems += _check_files(records, path)
    return records, problems


def _image_record(im, j, anns, path, root, strict) -> tuple[ImageRecord | None, list[Problem]]:
    where = f"images[{j}] (id {im['id']})"
    problems = []
    name = str(im["file_name"])
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or os.path.isabs(name):
        return None, [Problem(str(path), f"{where}.file_name", f"'{name}' escapes the dataset folder",
                              "use a path relative to the images folder, without '..'")]
    if not (_is_int(im["width"]) and _is_int(im["height"]) and im["width"] > 0 and im["height"] > 0):
        return None, [Problem(str(path), f"{where}.width/height", f"invalid size {im['width']}x{im['height']}",
                              "use the image's pixel size")]
    w, h = int(im["width"]), int(im["height"])
    boxes, cats, valid = [], [], []
    for ann in anns:
        box, found = _check_box(ann, w, h, path, strict)
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


def _check_box(ann: dict, w: int, h: int, path: Path, strict: bool) -> tuple[list[float] | None, list[Problem]]:
    where = f"annotations id {ann['id']}.bbox"
    bbox = ann["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return None, [Problem(str(path), where, f"{bbox!r} is not 4 numbers [x, y, width, height]", "fix the box")]
    x, y, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        return None, [Problem(str(path), where, f"{bbox} has NaN or infinite coordinates", "fix or remove the box")]
    if bw <= 0 or bh <= 0:
        return None, [Problem(str(path), where, f"{bbox} has width or height <= 0", "fix or remove the box")]
    x1, y1, x2, y2 = (float(v) for v in xywh_to_xyxy([x, y, bw, bh])[0])
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2):
        return [x1, y1, x2, y2], []
    if cx2 <= cx1 or cy2 <= cy1:
        return None, [Problem(str(path), where, f"{bbox} lies entirely outside the {w}x{h} image",
                              "fix or remove the box")]
    message = f"{bbox} extends outside the {w}x{h} image"
    if strict:
        return None, [Problem(str(path), where, message, "fix the box, or set data.strict_boxes=false to clip it")]
    return [cx1, cy1, cx2, cy2], [Problem(str(path), where, message + " (clipped)", "fix the box to silence this",
                                          severity="warning")]


def _check_files(records: list[ImageRecord], path: Path) -> list[Problem]:
    def check(rec: ImageRecord) -> Problem | None:
        where = f"image id {rec.id} ({rec.file_name})"
        if not rec.path.is_file():
            return Problem(str(path), where, f"file not found at {rec.path}",
                           "fix file_name or pass the images folder (--images-dir / data.*.images)")
        try:
            arr = read_image(rec.path)
        except DatasetError as e:
            return Problem(str(path), where, str(e), "re-export or remove this image")
        if arr.shape[:2] != (rec.height, rec.width):
            hint = " (EXIF rotation swaps them)" if arr.shape[:2] == (rec.width, rec.height) else ""
            return Problem(str(path), where,
                           f"JSON says {rec.width}x{rec.height} but the file is {arr.shape[1]}x{arr.shape[0]}{hint}",
                           "fix width/height in the JSON (or re-export the dataset)")
        return None

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        return [p for p in pool.map(check, records) if p is not None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_hashable(v: Any) -> bool:
    return isinstance(v, (int, str, float))


class CocoDetection(VisionDataset):
    """(image tensor float32 CHW in [0, 1], target dict) pairs for torchvision detection models.

    `transforms` is an Albumentations pipeline called as transforms(image=, bboxes=, labels=) with
    pascal_voc boxes; boxes it removes take their labels with them. With a `seed`, the augmentation of
    sample i in epoch e depends only on (seed, e, i): the same in any worker and after a resume.
    """

    def __init__(self, index: CocoIndex, transforms: Callable | None = None, seed: int | None = None):
        super().__init__(root=str(index.images_dir))
        self.index = index
        self.pipeline = transforms
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.index.images[i]
        image = read_image(rec.path)
        boxes, labels = rec.boxes, self.index.labels(rec)
        if self.pipeline is not None:
            if self.seed is not None and hasattr(self.pipeline, "set_random_seed"):
                self.pipeline.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
            out = self.pipeline(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return image_tensor(image), make_target(rec.id, boxes, labels, (rec.height, rec.width))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array -> the (3, H, W) float tensor in [0, 1] the model takes."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def make_target(image_id: int, boxes: np.ndarray, labels: np.ndarray,
                orig_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A torchvision detection target; `orig_size` is the (height, width) of the file, for mapping back."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = b[keep]
    return {
        "boxes": b,
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)[keep],
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
        "iscrowd": torch.zeros(len(b), dtype=torch.int64),
        "orig_size": torch.tensor(orig_size, dtype=torch.int64),
    }


def collate(batch: list) -> tuple[tuple, tuple]:
    images, targets = zip(*batch)
    return images, targets
