"""Validation of COCO annotation files: each finding is a Problem naming the file, the field and the fix."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..boxes import xywh_to_xyxy
from ..errors import DatasetError
from .images import decode_check, read_image

from .records import ImageRecord, LabelMap

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
    kind: str = ""  # UNUSABLE or TRUNCATED for an image file that is left out or used damaged

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}; {self.fix}"


UNUSABLE, TRUNCATED = "unusable image", "truncated image"


def format_problems(path: Path, errors: list[Problem]) -> str:
    lines = [f"{path}: {len(errors)} problem(s) make this dataset unusable:"]
    lines += [f"  - {p}" for p in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more (run `detector check-data {path}` for all)")
    return "\n".join(lines)


def check_structure(raw: dict[str, Any], path: Path) -> list[Problem]:
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
            elif not is_int(rec["id"]):
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
        if not is_int(rec[key]):
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


def check_categories(categories: list[dict], lmap: LabelMap, path: Path, shared: bool) -> list[Problem]:
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


def check_box(ann: dict, w: int, h: int, path: Path, strict: bool) -> tuple[list[float] | None, list[Problem]]:
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


def check_files(records: list[ImageRecord], path: Path) -> tuple[list[Problem], set[int]]:
    """Every image file's problems, and the ids of the images that cannot be used: a missing file (an error:
    usually a wrong images folder), a file that cannot be decoded (a warning: the image is left out, the rest
    goes on), a size other than the JSON's (an error). A truncated file PIL still decodes is a warning."""
    def check(rec: ImageRecord) -> Problem | None:
        where = f"image id {rec.id} ({rec.file_name})"
        if not rec.path.is_file():
            return Problem(str(path), where, f"file not found at {rec.path}",
                           "fix file_name or pass the images folder (--images-dir / data.*.images)")
        try:
            damage = decode_check(rec.path)
            arr = read_image(rec.path)
        except DatasetError as e:
            return Problem(str(path), where, f"left out: {e}", "or remove its entry from the JSON", severity="warning",
                           kind=UNUSABLE)
        if arr.shape[:2] != (rec.height, rec.width):
            hint = " (EXIF rotation swaps them)" if arr.shape[:2] == (rec.width, rec.height) else ""
            return Problem(str(path), where,
                           f"JSON says {rec.width}x{rec.height} but the file is {arr.shape[1]}x{arr.shape[0]}{hint}",
                           "fix width/height in the JSON (or re-export the dataset)")
        if damage:
            return Problem(str(path), where, damage, "re-export the image to silence this", severity="warning",
                           kind=TRUNCATED)
        return None

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        found = list(pool.map(check, records))
    unusable = {rec.id for rec, p in zip(records, found) if p is not None and p.kind != TRUNCATED}
    return [p for p in found if p is not None], unusable


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_hashable(v: Any) -> bool:
    return isinstance(v, (int, str, float))
