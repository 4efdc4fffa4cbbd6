"""The splits a config names, loaded and checked: data.train and data.val (one label map, no shared
image), and the optional data.test."""
from __future__ import annotations

from ..config import Config
from ..errors import DatasetError
from .coco import CocoIndex, load_coco
from .overlap import check_disjoint


def load_splits(cfg: Config) -> tuple[CocoIndex, CocoIndex]:
    """The validated training and validation splits named by the config (shared label map)."""
    d = cfg.data
    options = dict(keep_empty=d.keep_empty, drop_placeholder_categories=d.drop_placeholder_categories,
                   strict_boxes=d.strict_boxes)
    train = load_coco(d.train.annotations, d.train.images_dir, **options)
    if not any(len(r.boxes) for r in train.images):
        raise DatasetError(f"{train.path}: the training split has no boxes, so there is nothing to learn; "
                           "check its 'annotations' list (`detector check-data` shows what it holds)")
    val = load_coco(d.val.annotations, d.val.images_dir, label_map=train.label_map, **options)
    check_disjoint([("data.train", train), ("data.val", val)])  # scores on copies of training images mean nothing
    return train, val


def load_test(cfg: Config, label_map) -> CocoIndex | None:
    """The optional data.test split (None when the config names none), on the training split's label map."""
    d = cfg.data
    if not d.test.annotations:
        return None
    test = load_coco(d.test.annotations, d.test.images_dir, label_map=label_map, keep_empty=True,
                     drop_placeholder_categories=d.drop_placeholder_categories, strict_boxes=d.strict_boxes)
    if not any(len(r.boxes) for r in test.images):
        raise DatasetError(f"{test.path}: data.test has no boxes; a test split needs annotations")
    return test
