"""Other annotation formats into one COCO file, and COCO into YOLO, for `detector convert`.

Each format has its reader (xml_formats: Pascal VOC and CVAT; labelme; yolo; openimages), and all of them
make the same checked records (labelled.py): image names stay inside the dataset's folder, boxes are finite
and not inside out, and what a reader changed or left out comes back as warnings. Boxes stay in the pixels
the format writes (VOC's corners as written). `file_name` entries are relative to the COCO file's folder when
it holds the images (the file then loads as it is), else to the images' common folder.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DatasetError
from ..files import write_json, write_text
from .coco import CocoIndex, coco_index
from .labelled import Converted, Labelled
from .labelme import read_labelme
from .openimages import read_openimages
from .xml_formats import read_cvat, read_voc
from .yolo import read_yolo

FORMATS = ("voc", "yolo", "labelme", "cvat", "openimages")


def read_dataset(fmt: str, source: Path, images_dir: Path | None = None, names: Path | None = None) -> Converted:
    """The images of `source` in format `fmt`, the class names (in the format's own order when it has one,
    else sorted) and the reader's warnings."""
    if fmt == "yolo":
        return read_yolo(source, images_dir or _sibling(source, "images", swap="labels"), names)
    if fmt == "openimages":
        return read_openimages(source, images_dir or source.parent, names)
    if fmt == "voc":
        return read_voc(_files(source, (".xml",), "Pascal VOC .xml files"),
                        images_dir or _sibling(source if source.is_dir() else source.parent, "JPEGImages"))
    if fmt == "labelme":
        return read_labelme(_files(source, (".json",), "LabelMe .json files"), images_dir,
                            source if source.is_dir() else source.parent)
    if fmt == "cvat":
        return read_cvat(source, images_dir or source.parent)
    raise DatasetError(f"--from {fmt!r}: not a format detector converts; use one of {', '.join(FORMATS)}")


def convert_to_coco(converted: Converted, out: Path) -> tuple[CocoIndex, Path]:
    """Write `converted` as the COCO file `out` only once it loads back as check-data and training read it
    (a temporary file beside `out`, renamed over it): the index, and the folder file names are relative to."""
    root = images_root(converted.images, out)
    doc = to_coco(converted, root)
    index = coco_index(doc, out, root)
    write_json(out, doc)
    return index, root


def images_root(images: list[Labelled], out: Path) -> Path:
    """The folder file names are relative to: the COCO file's own when it holds every image (the file then
    loads as it is), else the images' common folder (pass it as --images-dir / data.*.images)."""
    folders = [im.image.parent.resolve() for im in images] or [out.parent.resolve()]
    here = out.parent.resolve()
    if all(f == here or here in f.parents for f in folders):
        return here
    return Path(os.path.commonpath(folders))


def to_coco(converted: Converted, root: Path) -> dict[str, Any]:
    """A COCO dict of the converted images (category ids: the format's own, else 1.. in class order), file
    names relative to `root`."""
    images, classes = converted.images, converted.classes
    ids = converted.category_ids or {name: i + 1 for i, name in enumerate(classes)}
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
    targets = {im["id"]: PurePosixPath(im["file_name"]).with_suffix(".txt") for im in coco["images"]}
    if PurePosixPath("classes.txt") in targets.values():
        raise DatasetError("an image named classes.* at the top of the images folder would write its labels over "
                           "classes.txt; rename it")
    written = [write_text(out_dir / "classes.txt", "".join(f"{c['name']}\n" for c in categories))]
    for im in coco["images"]:
        target = out_dir / targets[im["id"]]  # load_coco refused ../ and absolute names
        written.append(write_text(target, "".join(f"{line}\n" for line in lines[im["id"]])))
    return written


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
