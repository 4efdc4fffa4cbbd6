"""The splits a config names, loaded and checked: data.train and data.val (one label map, both with boxes,
no photo in common), and the optional data.test (no photo of either)."""
from __future__ import annotations

from typing import Callable

from ..config import Config
from ..errors import DatasetError
from .coco import CocoIndex, load_coco
from .overlap import check_disjoint


def load_splits(cfg: Config, log: Callable[[str], None] = print) -> tuple[CocoIndex, CocoIndex]:
    """The validated training and validation splits named by the config (shared label map). Copies of a
    training photo in data.val are logged as a warning: its scores are inflated, but nothing is lost."""
    d = cfg.data
    options = dict(keep_empty=d.keep_empty, drop_placeholder_categories=d.drop_placeholder_categories,
                   strict_boxes=d.strict_boxes)
    train = load_coco(d.train.annotations, d.train.images_dir, **options)
    if not any(len(r.boxes) for r in train.images):
        raise DatasetError(f"{train.path}: the training split has no boxes, so there is nothing to learn; "
                           "check its 'annotations' list (`detector check-data` shows what it holds)")
    val = load_coco(d.val.annotations, d.val.images_dir, label_map=train.label_map, **options)
    _require_boxes("data.val", val)
    for warning in [*train.file_warnings(), *val.file_warnings(),
                    *check_disjoint(("data.val", val), [("data.train", train)], d.copy_similarity)]:
        log(f"warning: {warning}")
    return train, val


def load_test(cfg: Config, train: CocoIndex, val: CocoIndex, log: Callable[[str], None] = print
              ) -> CocoIndex | None:
    """The optional data.test split (None when the config names none), on the training split's label map.
    A copy of a data.train or data.val photo in it (flipped, rotated or resized too) is a DatasetError at
    data.test_copy_error, a logged warning from data.copy_similarity."""
    d = cfg.data
    if not d.test.annotations:
        return None
    test = load_coco(d.test.annotations, d.test.images_dir, label_map=train.label_map, keep_empty=True,
                     drop_placeholder_categories=d.drop_placeholder_categories, strict_boxes=d.strict_boxes)
    _require_boxes("data.test", test)
    shared = check_disjoint(("data.test", test), [("data.train", train), ("data.val", val)], d.copy_similarity,
                            error_at=d.test_copy_error)
    for warning in [*test.file_warnings(), *shared]:
        log(f"warning: {warning}")
    return test


def _require_boxes(name: str, split: CocoIndex) -> None:
    if not any(len(r.boxes) for r in split.images):
        raise DatasetError(f"{split.path}: {name} has no boxes; a split that scores models needs annotations")
