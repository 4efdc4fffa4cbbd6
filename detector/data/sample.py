"""A deterministic synthetic COCO dataset: shapes of three classes on textured backgrounds.

`write_sample_dataset(DIR)` writes DIR/images/*.png, DIR/annotations.json (all images) and
DIR/train.json / DIR/val.json (the same images split 80/20). Same seed, same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DetectorError, StorageError
from ..files import write_json, writing

CLASSES = ("circle", "rectangle", "triangle")
SIZES = ((256, 256), (224, 288), (288, 224))  # (height, width)


@dataclass(frozen=True)
class SampleSpec:
    images: int = 600
    seed: int = 0
    val_fraction: float = 0.2
    empty_fraction: float = 0.08
    max_objects: int = 5


def write_sample_dataset(out_dir: str | Path, spec: SampleSpec = SampleSpec()) -> dict[str, Path]:
    """Write the dataset and return the paths of the three annotation files."""
    out = Path(out_dir)
    taken = [out / n for n in ("annotations.json", "train.json", "val.json", "images")
             if (out / n).exists() or (out / n).is_symlink()]
    if out.exists() and not out.is_dir():
        raise DetectorError(f"{out}: is a file; sample-data writes a folder, give it a folder name")
    if taken:
        raise DetectorError(f"{out}: already holds {', '.join(p.name for p in taken)}; sample-data writes only into a "
                            "folder without them (it never replaces files): choose another folder")
    with writing(out):
        (out / "images").mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    images, annotations = [], []
    for i in range(spec.images):
        image, objects = _draw_image(rng, empty=rng.random() < spec.empty_fraction, max_objects=spec.max_objects)
        name = f"images/sample_{i:05d}.png"
        if not cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):  # cv2 says only False
            raise StorageError(f"{out / name}: cannot write it (a full disk or a read-only folder?); fix the cause "
                               "and write the sample to a new folder")
        images.append({"id": i + 1, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
        for cls, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    n_val = max(1, int(round(spec.images * spec.val_fraction)))
    val_ids = set(int(v) for v in rng.choice(np.arange(1, spec.images + 1), n_val, replace=False))
    paths = {
        "annotations": _write(out / "annotations.json", images, annotations, categories, None),
        "train": _write(out / "train.json", images, annotations, categories, lambda i: i not in val_ids),
        "val": _write(out / "val.json", images, annotations, categories, lambda i: i in val_ids),
    }
    return paths


def _write(path: Path, images, annotations, categories, keep) -> Path:
    ims = [im for im in images if keep is None or keep(im["id"])]
    ids = {im["id"] for im in ims}
    doc = {
        "info": {"description": "detector synthetic sample data", "version": "1"},
        "images": ims,
        "annotations": [a for a in annotations if a["image_id"] in ids],
        "categories": categories,
    }
    return write_json(path, doc, indent=1)


def _draw_image(rng: np.random.Generator, empty: bool, max_objects: int):
    h, w = SIZES[rng.integers(len(SIZES))]
    image = _background(rng, h, w)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    wanted = 0 if empty else int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 10):
        if len(objects) == wanted:
            break
        cls = int(rng.integers(len(CLASSES)))
        size = float(np.exp(rng.uniform(np.log(18), np.log(90))))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        bw, bh = int(round(size * np.sqrt(aspect))), int(round(size / np.sqrt(aspect)))
        if bw >= w - 4 or bh >= h - 4:
            continue
        x, y = int(rng.integers(2, w - bw - 2)), int(rng.integers(2, h - bh - 2))
        box = (x, y, bw, bh)
        if any(_overlap(box, other) > 0.05 for _, other in objects):
            continue
        _draw_shape(image, rng, cls, box)
        objects.append((cls, box))
    return image, objects


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(60, 200, size=3)
    coarse = rng.normal(0, 25, size=(max(2, h // 32), max(2, w // 32), 3))
    texture = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    gy, gx = np.mgrid[0:h, 0:w]
    gradient = (rng.uniform(-0.15, 0.15) * gx + rng.uniform(-0.15, 0.15) * gy)[..., None]
    grain = rng.normal(0, 8, size=(h, w, 3))
    return np.clip(base + texture + gradient + grain, 0, 255).astype(np.uint8)


def _draw_shape(image: np.ndarray, rng: np.random.Generator, cls: int, box: tuple[int, int, int, int]) -> None:
    x, y, bw, bh = box
    patch_mean = image[y:y + bh, x:x + bw].reshape(-1, 3).mean(0)
    colour = np.clip(255 - patch_mean + rng.normal(0, 30, 3), 0, 255)
    colour = tuple(int(c) for c in colour)
    x2, y2 = x + bw - 1, y + bh - 1
    if CLASSES[cls] == "circle":
        cv2.ellipse(image, (((x + x2) / 2, (y + y2) / 2), (bw, bh), 0.0), colour, -1, cv2.LINE_AA)
    elif CLASSES[cls] == "rectangle":
        cv2.rectangle(image, (x, y), (x2, y2), colour, -1, cv2.LINE_AA)
    else:
        apex = int(rng.integers(x, x2 + 1))
        points = np.array([[apex, y], [x, y2], [x2, y2]], dtype=np.int32)
        if rng.random() < 0.5:  # point down
            points = np.array([[apex, y2], [x, y], [x2, y]], dtype=np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)
