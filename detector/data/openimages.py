"""Open Images box CSVs into images with boxes, for `detector convert`.

Read here: globox's reader expects each ImageID to be a file name, but Open Images' IDs have no extension,
its LabelNames are MIDs (/m/01g317) named in a separate class-descriptions file, and a bad row fails an
assert without its line. Rows with Confidence 0 (a verified absence) are skipped. Images the CSV does not
name are left out: Open Images lists every image that has a box, and a shared folder may hold other splits'.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from ..errors import DatasetError
from .images import displayed_size
from .labelled import Converted, Labelled, checked_box
from .images import IMAGE_SUFFIXES

COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_openimages(source: Path, folder: Path, names: Path | None) -> Converted:
    """The images the box CSV `source` names, found in `folder` by ID with any image suffix."""
    rows = _rows(source)
    descriptions = _names(names or _find_descriptions(source), rows)
    files = defaultdict(list)
    for p in folder.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files[p.stem].append(p)
    sizes, boxes = {}, defaultdict(list)
    for line, row in rows:
        where = f"{source}: line {line}"
        image = _image(files, row["ImageID"], folder, where)
        if image not in sizes:
            sizes[image] = displayed_size(image)
        width, height = sizes[image]
        x0, x1, y0, y1 = (float(row[k]) for k in COLUMNS[2:])
        boxes[image].append(checked_box(descriptions[row["LabelName"]], (x0 * width, y0 * height, x1 * width,
                                        y1 * height), where, crowd=row.get("IsGroupOf", "0") == "1"))
    images = [Labelled(p, w, h, boxes[p]) for p, (w, h) in sizes.items()]
    return Converted(images, sorted({b.label for im in images for b in im.boxes}))


def _image(files: dict[str, list[Path]], image_id: str, folder: Path, where: str) -> Path:
    found = files.get(image_id, [])
    if not found:
        raise DatasetError(f"{where}: image {image_id!r} is not in {folder}; pass --images-dir, the folder of the "
                           "split's images")
    if len(found) > 1:
        shown = ", ".join(str(p.relative_to(folder)) for p in sorted(found)[:3])
        raise DatasetError(f"{where}: image {image_id!r} is in {len(found)} places under {folder} ({shown}); pass "
                           "--images-dir, the folder of this split's images only")
    return found[0]


def _rows(source: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each box row, checked; verified absences (Confidence 0) left out."""
    try:
        with source.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{source}: no column {', '.join(missing)}; an Open Images box CSV has the header "
                                   f"{','.join(COLUMNS)} (IsGroupOf and Confidence optional)")
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{source}: not a readable CSV file ({e})") from None
    kept = []
    for line, row in rows:
        try:
            x0, x1, y0, y1 = (float(row[k]) for k in COLUMNS[2:])
            confidence = float(row.get("Confidence") or 1)  # "0", "0.0" and "0.00" alike
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: line {line}: XMin, XMax, YMin, YMax and Confidence must be numbers") from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise DatasetError(f"{source}: line {line}: the box ({x0}, {y0}, {x1}, {y1}) must be fractions of the "
                               "image with XMin < XMax and YMin < YMax")
        if confidence != 0:
            kept.append((line, row))
    return kept


def _names(path: Path | None, rows: list[tuple[int, dict[str, str]]]) -> dict[str, str]:
    """LabelName -> display name from a class-descriptions CSV (MID,name rows, a header or none); without
    one, LabelNames are the names, unless they are MIDs."""
    labels = {row["LabelName"] for _, row in rows}
    if path is None:
        mids = sorted(label for label in labels if label.startswith("/m/"))
        if mids:
            raise DatasetError(f"labels such as {mids[0]} are Open Images MIDs and no class-descriptions CSV was found "
                               "beside the box CSV; pass --names oidv7-class-descriptions.csv")
        return {label: label for label in labels}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            table = {r[0]: r[1] for r in csv.reader(f) if len(r) >= 2}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a readable class-descriptions CSV ({e})") from None
    unnamed = sorted(labels - table.keys())
    if unnamed:
        raise DatasetError(f"{path}: no name for {len(unnamed)} LabelName(s) of the box CSV (e.g. {unnamed[0]}); "
                           "pass the class-descriptions file of the same Open Images version")
    return {label: table[label] for label in labels}


def _find_descriptions(source: Path) -> Path | None:
    found = [p for pattern in ("*class-descriptions*.csv", "*class_descriptions*.csv")
             for p in sorted(source.parent.glob(pattern))]
    return found[0] if found else None
