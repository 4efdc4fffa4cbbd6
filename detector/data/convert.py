"""Other annotation formats into one COCO file, and COCO into YOLO, for `detector convert`.

Pascal VOC XML, LabelMe JSON and CVAT XML are read by globox (one file at a time here, so a broken file is
named). YOLO txt is read here: globox's reader takes one image extension for the whole folder, skips the
images that have no label file (negatives) and names neither the file nor the line of a bad box. So is
Open Images CSV: globox's reader expects each ImageID to be a file name, but Open Images' IDs have no
extension, its LabelNames are MIDs (/m/01g317) named in a separate class-descriptions file, and a bad row
fails an assert without its line. Boxes
stay in the pixels globox reads (VOC's corners as written). `file_name` entries are relative to the COCO
file's folder when it holds the images (the file then loads as it is), else to the images' common folder.
"""
from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as et
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import yaml
from PIL import Image

from ..errors import DatasetError
from ..files import write_text

FORMATS = ("voc", "yolo", "labelme", "cvat", "openimages")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NAMES_FILES = ("classes.txt", "obj.names", "classes.names", "data.yaml", "dataset.yaml")


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


def read_dataset(fmt: str, source: Path, images_dir: Path | None = None, names: Path | None = None
                 ) -> tuple[list[Labelled], list[str]]:
    """The images of `source` in format `fmt` and the class names (in the format's own order when it
    has one, else sorted)."""
    if fmt == "yolo":
        return _read_yolo(source, images_dir, names)
    if fmt == "openimages":
        return _read_openimages(source, images_dir, names)
    readers: dict[str, Callable[[Path, Path | None], list[Labelled]]] = {
        "voc": _read_voc, "labelme": _read_labelme, "cvat": _read_cvat}
    if fmt not in readers:
        raise DatasetError(f"--from {fmt!r}: not a format detector converts; use one of {', '.join(FORMATS)}")
    images = readers[fmt](source, images_dir)
    return images, sorted({b.label for im in images for b in im.boxes})


def images_root(images: list[Labelled], out: Path) -> Path:
    """The folder file names are relative to: the COCO file's own when it holds every image (the file then
    loads as it is), else the images' common folder (pass it as --images-dir / data.*.images)."""
    folders = [im.image.parent.resolve() for im in images] or [out.parent.resolve()]
    here = out.parent.resolve()
    if all(f == here or here in f.parents for f in folders):
        return here
    return Path(os.path.commonpath(folders))


def to_coco(images: list[Labelled], classes: list[str], root: Path) -> dict[str, Any]:
    """A COCO dict of `images` (category ids 1.. in `classes` order), file names relative to `root`."""
    ids = {name: i + 1 for i, name in enumerate(classes)}
    doc: dict[str, Any] = {"images": [], "annotations": [],
                           "categories": [{"id": i, "name": n, "supercategory": "none"} for n, i in ids.items()]}
    for image_id, im in enumerate(sorted(images, key=lambda im: str(im.image)), start=1):
        doc["images"].append({"id": image_id, "file_name": im.image.resolve().relative_to(root).as_posix(),
                              "width": im.width, "height": im.height})
        for b in im.boxes:
            x0, y0, x1, y1 = b.xyxy
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": ids[b.label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                       "area": (x1 - x0) * (y1 - y0), "iscrowd": int(b.crowd)})
    return doc


def write_yolo(coco: dict[str, Any], out_dir: Path) -> list[Path]:
    """OUT_DIR/FOLDERS/NAME.txt per image, in the folders of its file_name (as Ultralytics pairs labels/ with
    images/; cam1/0001.jpg and cam2/0001.jpg stay two files), with lines class cx cy w h, relative (an empty
    file for an image without boxes), and OUT_DIR/classes.txt (one name per line, in category id order)."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(categories)}
    lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0):
            continue
        (w, h), (x, y, bw, bh) = sizes[a["image_id"]], a["bbox"]
        lines[a["image_id"]].append(f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                                    f"{bw / w:.6f} {bh / h:.6f}")
    written = [write_text(out_dir / "classes.txt", "".join(f"{c['name']}\n" for c in categories))]
    for im in coco["images"]:
        target = out_dir / PurePosixPath(im["file_name"]).with_suffix(".txt")  # load_coco refused ../ and /
        written.append(write_text(target, "".join(f"{line}\n" for line in lines[im["id"]])))
    return written


def _read_voc(source: Path, images_dir: Path | None) -> list[Labelled]:
    from globox import Annotation

    files = _files(source, (".xml",), "Pascal VOC .xml files")
    folder = images_dir or _sibling(source if source.is_dir() else source.parent, "JPEGImages")
    return [_from_globox(Annotation.from_xml, f, folder) for f in files]


def _read_labelme(source: Path, images_dir: Path | None) -> list[Labelled]:
    from globox import Annotation

    files = _files(source, (".json",), "LabelMe .json files")
    return [_from_globox(Annotation.from_labelme, f, images_dir or f.parent) for f in files]


def _read_cvat(source: Path, images_dir: Path | None) -> list[Labelled]:
    from globox import Annotation
    from globox.errors import ParsingError

    try:
        nodes = list(et.parse(source).getroot().iter("image"))
    except (OSError, et.ParseError) as e:
        raise DatasetError(f"{source}: not a readable CVAT XML file ({e}); export 'CVAT for images 1.1'") from None
    folder = images_dir or source.parent
    images = []
    for k, node in enumerate(nodes):
        try:
            images.append(_labelled(Annotation.from_cvat(node), folder))
        except (ParsingError, ValueError) as e:
            raise DatasetError(f"{source}: <image> number {k + 1} ({node.get('name')!r}): {e}; every image needs "
                               "name, width and height, every box label, xtl, ytl, xbr, ybr") from None
    return images


def _from_globox(parse: Callable, path: Path, folder: Path) -> Labelled:
    from globox.errors import ParsingError

    try:
        return _labelled(parse(path), folder)
    except (ParsingError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: cannot read it ({e}); check the file's fields against its format") from None


def _labelled(annotation, folder: Path) -> Labelled:
    width, height = annotation.image_size
    boxes = [Box(b.label, tuple(float(v) for v in b.ltrb)) for b in annotation.boxes]
    return Labelled(folder / annotation.image_id, int(width), int(height), boxes)


def _read_yolo(labels: Path, images_dir: Path | None, names: Path | None) -> tuple[list[Labelled], list[str]]:
    """YOLO (darknet / v5 layout): LABELS/NAME.txt per image of IMAGES (any image suffix; no file: no boxes)."""
    classes = _yolo_names(names or _find_names(labels))
    folder = images_dir or _sibling(labels, "images", swap="labels")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{folder}: no image files; pass --images-dir, the folder the label files describe")
    found = []
    for image in images:
        txt = labels / image.relative_to(folder).with_suffix(".txt")
        with Image.open(image) as im:
            width, height = im.size
        found.append(Labelled(image, width, height, _yolo_boxes(txt, classes, width, height) if txt.exists() else []))
    orphans = {p.relative_to(labels).with_suffix("") for p in labels.rglob("*.txt")} - \
        {p.relative_to(folder).with_suffix("") for p in images} - {Path(Path(n).stem) for n in NAMES_FILES}
    if orphans:
        example = sorted(orphans)[0]
        raise DatasetError(f"{labels}: {len(orphans)} label file(s) have no image in {folder} (e.g. {example}.txt); "
                           "pass the matching --images-dir")
    return found, classes


def _yolo_boxes(txt: Path, classes: list[str], width: int, height: int) -> list[Box]:
    boxes = []
    for number, line in enumerate(txt.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{txt}: line {number} ({line.strip()!r})"
        fields = line.split()
        try:
            k, cx, cy, w, h = int(fields[0]), *map(float, fields[1:5])
        except (ValueError, IndexError):
            raise DatasetError(f"{where}: expected 'class cx cy w h' (an integer and four numbers)") from None
        if not 0 <= k < len(classes):
            raise DatasetError(f"{where}: class {k} is not in the {len(classes)} class names; fix the line or "
                               "the names file")
        if w <= 0 or h <= 0 or not all(-1e-3 <= v <= 1 + 1e-3 for v in (cx, cy, w, h)):
            raise DatasetError(f"{where}: cx, cy, w and h must be fractions of the image in [0, 1], w and h > 0")
        boxes.append(Box(classes[k], ((cx - w / 2) * width, (cy - h / 2) * height,
                                      (cx + w / 2) * width, (cy + h / 2) * height)))
    return boxes


def _yolo_names(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the class names ({e.strerror})") from None
    if path.suffix in (".yaml", ".yml"):
        names = (yaml.safe_load(text) or {}).get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: no 'names' list or mapping; it should read names: [cat, dog] or "
                               "names: {0: cat, 1: dog}")
        return [str(n) for n in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names; write one name per line, in class-index order")
    return names


def _find_names(labels: Path) -> Path:
    for folder in (labels, labels.parent, labels.parent.parent):
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f"{labels}: no class-names file ({', '.join(NAMES_FILES)}) in it or the two folders above; "
                       "pass --names FILE (one name per line, or a YOLO data.yaml)")


OPEN_IMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def _read_openimages(source: Path, images_dir: Path | None, names: Path | None) -> tuple[list[Labelled], list[str]]:
    """An Open Images box CSV (ImageID, LabelName, XMin, XMax, YMin, YMax as fractions, optional IsGroupOf and
    Confidence): the images it names, found in IMAGES by ID with any image suffix. Rows with Confidence 0
    (a verified absence) are skipped. Images the CSV does not name are left out: Open Images lists every
    image that has a box, and a shared folder may hold other splits' images."""
    rows = _openimages_rows(source)
    descriptions = _openimages_names(names or _find_descriptions(source), rows)
    folder = images_dir or source.parent
    files = {p.stem: p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    found, boxes = {}, {}
    for line, row in rows:
        image = files.get(row["ImageID"])
        if image is None:
            raise DatasetError(f"{source}: line {line}: image {row['ImageID']!r} is not in {folder}; pass "
                               "--images-dir, the folder of the split's images")
        if image not in found:
            with Image.open(image) as im:
                found[image] = im.size
        width, height = found[image]
        x0, x1, y0, y1 = (float(row[k]) for k in OPEN_IMAGES_COLUMNS[2:])
        boxes.setdefault(image, []).append(Box(descriptions[row["LabelName"]], (x0 * width, y0 * height, x1 * width,
                                               y1 * height), crowd=row.get("IsGroupOf", "0") == "1"))
    images = [Labelled(p, w, h, boxes[p]) for p, (w, h) in found.items()]
    return images, sorted({b.label for im in images for b in im.boxes})


def _openimages_rows(source: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each box row, checked."""
    try:
        with source.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in OPEN_IMAGES_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{source}: no column {', '.join(missing)}; an Open Images box CSV has the header "
                                   f"{','.join(OPEN_IMAGES_COLUMNS)} (IsGroupOf and Confidence optional)")
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{source}: not a readable CSV file ({e})") from None
    for line, row in rows:
        try:
            x0, x1, y0, y1 = (float(row[k]) for k in OPEN_IMAGES_COLUMNS[2:])
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: line {line}: XMin, XMax, YMin and YMax must be numbers") from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise DatasetError(f"{source}: line {line}: the box ({x0}, {y0}, {x1}, {y1}) must be fractions of the "
                               "image with XMin < XMax and YMin < YMax")
    return [(line, row) for line, row in rows if row.get("Confidence", "1") not in ("0", "0.0")]


def _openimages_names(path: Path | None, rows: list[tuple[int, dict[str, str]]]) -> dict[str, str]:
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
        with path.open(newline="") as f:
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


def _files(source: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes) if source.is_dir() else []
    if not files:
        raise DatasetError(f"{source}: no {what} (a folder of them, or one file)")
    return files


def _sibling(source: Path, name: str, swap: str | None = None) -> Path:
    """The images folder beside an annotations folder: SOURCE/../NAME, or SOURCE with its `swap` part
    renamed (YOLOv5's labels/train -> images/train), or SOURCE itself."""
    if swap and swap in source.parts:
        parts = list(source.parts)
        parts[len(parts) - 1 - parts[::-1].index(swap)] = name
        if Path(*parts).is_dir():
            return Path(*parts)
    return source.parent / name if (source.parent / name).is_dir() else source
