"""`detector init`: a starting config for a user's own COCO data, each data-dependent choice with its reason.

The recipe is the generic fine-tuning one (recipes/finetune.yaml); from the data come the split paths (a
Roboflow export's valid/ and test/ folders are found beside train/; without a validation split one is
carved from the training file, copies of one photo kept together), the image size (from the images' and
boxes' sizes), the anchors (k-means where they fit the boxes better than torchvision's defaults), the epochs
(from the number of training images) and the folds; what `check-data` found heads the file.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from . import config as config_mod
from .data.coco import CocoIndex, load_coco
from .data.folds import make_folds
from .data.sampling import box_shapes
from .data.summary import copies_within, summarize
from .errors import ConfigError, DatasetError
from .files import write_json, write_text
from .outputs import claim_files
from .typed_yaml import read_with_bases

RECIPE = Path(__file__).parent / "recipes" / "finetune.yaml"
SECTIONS = ("data", "model", "train", "eval", "cv", "search", "refit")
IMAGE_PRESENTATIONS = 2400  # training images x epochs the starting recipe aims at
SPLIT_NAMES = {"val": ("valid", "val", "validation"), "test": ("test",)}


@dataclass
class Starter:
    """The config `init` writes: values by section (the recipe's YAML, then the data's choices), the reason
    of each data-dependent one by dotted key, header lines, and the split files it carved (path -> COCO
    dict) when the data had no validation split."""

    values: dict[str, dict[str, Any]]
    reasons: dict[str, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    carved: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def set(self, key: str, value: Any, reason: str | None = None) -> None:
        """Set `section.name` (a dict value is one flow-style mapping, e.g. data.train)."""
        section, name = key.split(".", 1)
        self.values.setdefault(section, {})[name] = value
        if reason:
            self.reasons[key] = reason

    def get(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return self.values[section][name]


def find_split(train: Path, kind: str) -> Path | None:
    """A Roboflow export's valid/ or test/ annotation file beside train/ (same file name), if there is one."""
    for name in SPLIT_NAMES[kind]:
        candidate = train.parent.parent / name / train.name
        if candidate != train and candidate.is_file():
            return candidate
    return None


def plan_config(train_path: Path, out: Path, val_path: Path | None = None, test_path: Path | None = None,
                images_dir: Path | None = None) -> Starter:
    """The starting config for the data at `train_path` (validated: a file that cannot train is an error);
    `images_dir`: the folder its file_name entries are relative to, when not the file's own."""
    train = _usable(load_coco(train_path, images_dir, raise_on_error=False))
    recipe = config_mod.load(RECIPE)
    starter = Starter(read_with_bases(RECIPE, ()), header=_findings(train))  # the rest: the library defaults
    val_path = val_path or find_split(train_path, "val")
    test_path = test_path or find_split(train_path, "test")
    if val_path is None:
        train_path, val_path = _carve(train, out, starter)
    for kind, path in (("train", train_path), ("val", val_path), ("test", test_path)):
        carved_or_moved = path in starter.carved or (kind == "train" and images_dir is not None)
        starter.set(f"data.{kind}", {"annotations": _shown(path) if path else "",
                                     "images": _shown(train.images_dir) if carved_or_moved else None})
    if val_path not in starter.carved:
        _usable(load_coco(val_path, label_map=train.label_map, raise_on_error=False))
    _choose_size_and_anchors(train, recipe, starter)
    _choose_epochs_and_folds(train, starter)
    return starter


def _usable(index: CocoIndex) -> CocoIndex:
    summary = summarize(index)
    if not summary["usable"] or not summary["boxes"]:
        errors = summary["errors"]
        problems = "; ".join(errors[:2]) + (f"; and {len(errors) - 2} more" if len(errors) > 2 else "") \
            if errors else "it holds no boxes"
        raise DatasetError(f"{index.path}: cannot train on it ({problems}); `detector check-data {index.path}` "
                           "lists every problem with its fix")
    return index


def _findings(index: CocoIndex) -> list[str]:
    s = summarize(index)
    lines = [f"check-data {s['annotations']}: {s['images']} images ({s['images_without_boxes']} without boxes), "
             f"{s['boxes']} boxes: " + ", ".join(f"{k} {v}" for k, v in s["boxes_per_class"].items())]
    lines += [f"warning: {w}" for w in s["warnings"][:5]]
    copies = copies_within(index, config_mod.DataConfig().copy_similarity)
    if copies["photos_with_copies"]:
        lines.append(f"{copies['images_in_copies']} images are copies of {copies['photos_with_copies']} photos "
                     "(Roboflow names, identical files or content): cv keeps each photo's copies in one fold")
    rare = [k for k, v in s["boxes_per_class"].items() if v < 20]
    if rare:
        lines.append(f"few boxes of {', '.join(rare)} (< 20): expect a noisy AP for them; label more if you can")
    return lines


def _carve(train: CocoIndex, out: Path, starter: Starter) -> tuple[Path, Path]:
    """No validation split: a fifth of the training images (grouped by source photo) become one."""
    similarity = config_mod.DataConfig().copy_similarity
    try:
        val_ids = set(make_folds(train, n_folds=5, strategy="auto", similarity=similarity, seed=0)[0])
    except ConfigError:
        raise DatasetError(f"{train.path}: too few distinct photos to carve a validation fifth off (fewer than 5 "
                           "after keeping copies of one photo together); label more images, or pass --val with a "
                           "validation split of your own") from None
    raw = train.to_coco()
    parts = {}
    for kind, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        images = [im for im in raw["images"] if keep(im["id"])]
        ids = {im["id"] for im in images}
        parts[kind] = out.with_name(f"{out.stem}.{kind}.json")
        starter.carved[parts[kind]] = {**raw, "images": images,
                                       "annotations": [a for a in raw["annotations"] if a["image_id"] in ids]}
    starter.header.append(f"no validation split was found beside {train.path}: {len(val_ids)} of its "
                          f"{len(train.images)} images (copies of one photo together) were split off into "
                          f"{parts['val'].name}, the rest into {parts['train'].name}")
    return parts["train"], parts["val"]


def _choose_size_and_anchors(train: CocoIndex, recipe: config_mod.Config, starter: Starter) -> None:
    from .models.anchors import fit_anchors
    from .models.backbones import build_backbone, num_levels

    longest = float(np.median([max(r.width, r.height) for r in train.images]))
    size = int(min(max(_round32(longest), 320), 640))
    small = _median_box(train, size)
    reason = (f"the images' median longest side is {longest:.0f} px; capped at 640 for speed" if longest > 640 else
              f"the images' median longest side is {longest:.0f} px")
    if small < 16 and longest > size:
        size = int(min(_round32(longest), 1024))
        reason += f"; raised to {size} because the median box would be {small:.0f} px wide at 640"
    starter.set("data.image_size", size, reason + f" (median box {_median_box(train, size):.0f} px at this size)")
    body = build_backbone(recipe.model.backbone, pretrained=False, trainable_layers=recipe.model.trainable_layers,
                          frozen_bn=recipe.model.frozen_bn, fpn_channels=recipe.model.fpn_channels)
    fit = fit_anchors(box_shapes(train, size), num_levels=num_levels(body), per_level=recipe.model.anchors_per_level)
    f, d = fit.fitted, fit.default
    numbers = (f"k-means anchors: mean IoU {f.mean_iou:.3f}, best possible recall {f.bpr:.3f}; torchvision's "
               f"defaults: {d.mean_iou:.3f}, {d.bpr:.3f}")
    starter.set("model.anchors", "kmeans" if fit.beats_default else "default",
                   (f"{numbers}: fitted per fold" if fit.beats_default else f"{numbers}: the defaults fit as well"))


def _choose_epochs_and_folds(train: CocoIndex, starter: Starter) -> None:
    n = len(train.images)
    epochs = int(min(max(math.ceil(IMAGE_PRESENTATIONS / n), 6), 24))
    starter.set("train.epochs", epochs, f"{n} training images: about {IMAGE_PRESENTATIONS} image presentations "
                                           "(images x epochs), 6 to 24 epochs")
    folds = 3 if n >= 60 else 2
    starter.set("cv.folds", folds, f"{n} training images: {folds} folds of {n // folds} validation images "
                                      "each estimate a config's score; the published models train on all of them")


def render(starter: Starter, source: Path) -> str:
    """The YAML text: header comments, then each section's keys, a reason comment above the chosen ones."""
    lines = [f"# Written by `detector init {source}`: the generic fine-tuning recipe (recipes/finetune.yaml)",
             "# with the choices below made from your data. Paths are relative to the folder init ran in (or absolute).",
             *(f"# {h}" for h in starter.header),
             "# Objects with no up or down (aerial, microscopy)? Add data.augment vflip: 0.5 and rotate90: 0.5.",
             "# Next: detector train THIS.yaml --out runs/mine   or   detector study THIS.yaml --name mine", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for key, value in starter.values.get(section, {}).items():
            if f"{section}.{key}" in starter.reasons:
                lines.append(f"  # {starter.reasons[f'{section}.{key}']}")
            lines.append(f"  {key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def write(starter: Starter, out: Path, source: Path, force: bool = False, inputs: Sequence[Path] = ()) -> list[Path]:
    """Write the config (and any carved split files); an existing file is kept unless `force`, and one of the
    user's `inputs` (the annotation files read, `source` among them) always."""
    targets = claim_files([out, *starter.carved], [source, *inputs], force=force)
    for path, coco in starter.carved.items():
        write_json(path, coco, indent=None)
    write_text(out, render(starter, source))
    config_mod.load(out)  # what init writes loads: a bug here must not reach the user's first run
    return targets


def _flow(value: Any) -> str:
    """One value on one line: a scalar, or a mapping or list in YAML's flow style."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).removesuffix("...\n").strip()


def _median_box(index: CocoIndex, size: int) -> float:
    """The median box's side (sqrt of its area) in input pixels at `size`."""
    return float(np.median(np.sqrt(box_shapes(index, size).prod(1))))


def _shown(path: Path) -> str:
    """A path relative to the current directory when it lies below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)


def _round32(value: float) -> int:
    return int(math.ceil(value / 32) * 32)
