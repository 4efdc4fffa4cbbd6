"""YOLO txt labels into images with boxes, for `detector convert`.

Read here: globox's reader takes one image extension for a whole folder, skips the images without a label
file (negatives) and names neither the file nor the line of a bad box. A line is `class cx cy w h` (fractions
of the image as displayed, EXIF orientation applied, as Ultralytics reads them) or a segment `class x1 y1 x2
y2 ...` (three or more points), which becomes the box around it. Class names come from classes.txt / obj.names
(one per line, in id order) or a data.yaml whose `names` is a list or an id -> name mapping (sparse ids kept).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import DatasetError
from .images import IMAGE_SUFFIXES, displayed_size
from .labelled import Box, Converted, Labelled, checked_box

NAMES_FILES = ("classes.txt", "obj.names", "classes.names", "data.yaml", "dataset.yaml")


def read_yolo(labels: Path, folder: Path, names: Path | None) -> Converted:
    """LABELS/NAME.txt per image of `folder` (any image suffix; no file: no boxes)."""
    classes = yolo_names(names or _find_names(labels))
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{folder}: no image files; pass --images-dir, the folder the label files describe")
    found = []
    for image in images:
        txt = labels / image.relative_to(folder).with_suffix(".txt")
        width, height = displayed_size(image)
        found.append(Labelled(image, width, height, _boxes(txt, classes, width, height) if txt.exists() else []))
    orphans = {p.relative_to(labels).with_suffix("") for p in labels.rglob("*.txt")} - \
        {p.relative_to(folder).with_suffix("") for p in images} - {Path(Path(n).stem) for n in NAMES_FILES}
    if orphans:
        example = sorted(orphans)[0]
        raise DatasetError(f"{labels}: {len(orphans)} label file(s) have no image in {folder} (e.g. {example}.txt); "
                           "pass the matching --images-dir")
    return Converted(found, [classes[k] for k in sorted(classes)], category_ids={n: k + 1 for k, n in classes.items()})


def _boxes(txt: Path, classes: dict[int, str], width: int, height: int) -> list[Box]:
    try:
        text = txt.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{txt}: not a readable UTF-8 label file ({e})") from None
    return [_line(f"{txt}: line {number} ({line.strip()!r})", line.split(), classes, width, height)
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _line(where: str, fields: list[str], classes: dict[int, str], width: int, height: int) -> Box:
    try:
        k, values = int(fields[0]), [float(v) for v in fields[1:]]
    except (ValueError, IndexError):
        values, k = [], -1
    if len(values) != 4 and (len(values) < 6 or len(values) % 2):
        raise DatasetError(f"{where}: expected 'class cx cy w h' (an integer and four numbers) or a segment "
                           "'class x1 y1 x2 y2 x3 y3 ...'")
    if k not in classes:
        raise DatasetError(f"{where}: class {fields[0]} is not one of the {len(classes)} class ids of the names "
                           "file; fix the line or the names file")
    if not all(-1e-3 <= v <= 1 + 1e-3 for v in values):
        raise DatasetError(f"{where}: every number must be a fraction of the image in [0, 1]")
    if len(values) == 4:
        cx, cy, w, h = values
        xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    else:
        xs, ys = values[0::2], values[1::2]
        xyxy = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
    return checked_box(classes[k], xyxy, where)


def yolo_names(path: Path) -> dict[int, str]:
    """Class id -> name from a names file (one per line) or a YOLO data.yaml."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows Notepad starts a file with a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the class names ({e})") from None
    if path.suffix in (".yaml", ".yml"):
        return _yaml_names(path, text)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names; write one name per line, in class-index order")
    return dict(enumerate(names))


def _yaml_names(path: Path, text: str) -> dict[int, str]:
    fix = "it should read names: [cat, dog] or names: {0: cat, 1: dog}"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not readable YAML ({str(e).splitlines()[0]}); {fix}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list) and names:
        return {k: str(n) for k, n in enumerate(names)}
    if isinstance(names, dict) and names and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                 for k in names):
        return {k: str(names[k]) for k in sorted(names)}
    raise DatasetError(f"{path}: no 'names' list, or a mapping whose keys are not all class ids (0, 1, ...); {fix}")


def _find_names(labels: Path) -> Path:
    for folder in (labels, labels.parent, labels.parent.parent):
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f"{labels}: no class-names file ({', '.join(NAMES_FILES)}) in it or the two folders above; "
                       "pass --names FILE (one name per line, or a YOLO data.yaml)")
