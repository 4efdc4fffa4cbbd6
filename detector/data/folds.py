"""K-fold splits of a COCO index: plain, stratified by the classes in each image, or grouped (`auto`: grouped
when the file names show copies of one photo, stratified otherwise).

`make_folds` returns the validation image ids of each fold. `kfold` is scikit-learn's shuffled KFold.
Stratification is iterative multi-label stratification (Sechidis et al., 2011): rarest label first, each
item goes to the fold that still wants that label most. Grouped folds apply the same procedure to groups
(e.g. Roboflow copies of one photo), so a group never straddles two folds and the classes stay balanced.
scikit-learn has no multi-label stratification; its StratifiedGroupKFold takes one label per image.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
from sklearn.model_selection import KFold

from ..errors import ConfigError
from .coco import CocoIndex
from .records import ImageRecord

EMPTY = -1  # the "label" of an image without boxes, so negatives spread over folds too
ROBOFLOW = re.compile(r"^(?P<source>.+?)_(?:png|jpe?g|bmp|tiff?|webp)\.rf\.[0-9a-zA-Z]+\.\w+$", re.IGNORECASE)


def make_folds(index: CocoIndex, *, n_folds: int, strategy: str, group_by: str = "roboflow",
               seed: int = 0) -> list[list[int]]:
    """Image ids of the validation part of each fold (sorted), for `strategy` auto, kfold, stratified or group.
    `n_folds` is at least 2: cv.folds' own check (config.py)."""
    strategy, _ = resolve_strategy(index, strategy, group_by)
    records = index.images
    if strategy == "group":
        keys = [group_key(r, group_by) for r in records]
    else:
        keys = [str(r.id) for r in records]
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for key, rec in zip(keys, records):
        groups[key].append(rec)
    names = sorted(groups)
    if len(names) < n_folds:
        unit = "groups" if strategy == "group" else "images"
        raise ConfigError(f"cv.folds={n_folds} but the training data has only {len(names)} {unit}; lower cv.folds")
    rng = np.random.default_rng(seed)
    if strategy == "kfold":  # scikit-learn's shuffled KFold: nothing of ours to test for a plain split
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(names)
        assignment = {names[i]: k for k, (_, held) in enumerate(splits) for i in held}
    else:
        labels = [_labels(groups[n]) for n in names]
        sizes = [len(groups[n]) for n in names]
        assignment = dict(zip(names, _iterative_stratification(labels, sizes, n_folds, rng)))
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    for name in names:
        folds[assignment[name]].extend(r.id for r in groups[name])
    return [sorted(f) for f in folds]


def resolve_strategy(index: CocoIndex, strategy: str, group_by: str = "roboflow") -> tuple[str, str | None]:
    """The strategy `auto` stands for, and a warning when a chosen one would leak copies across folds.

    auto: `group` when cv.group_by names a grouping of its own (regex:, field:) or when file names show
    Roboflow copies (several `NAME_png.rf.HASH.jpg` of one source photo); `stratified` otherwise.
    """
    copied = roboflow_copied_sources(index)
    if strategy == "auto":
        return ("group" if group_by != "roboflow" or copied else "stratified"), None
    if strategy != "group" and copied:
        return strategy, (f"{index.path}: {copied} source photos have several Roboflow copies "
                          f"(NAME_png.rf.HASH.jpg); cv.strategy={strategy} puts copies of one photo in "
                          "different folds, so validation scores are inflated; use cv.strategy=auto or group")
    return strategy, None


def roboflow_copied_sources(index: CocoIndex) -> int:
    """How many source photos appear more than once as Roboflow copies in the index."""
    counts: dict[str, int] = defaultdict(int)
    for rec in index.images:
        counts[group_key(rec, "roboflow")] += 1
    return sum(1 for n in counts.values() if n > 1)


def group_key(record: ImageRecord, group_by: str) -> str:
    """`roboflow`: the source file name before `_png.rf.HASH`; `regex:PATTERN`: the first group (or the
    match) of PATTERN in file_name; `field:NAME`: that field of the image record."""
    name = record.file_name.replace("\\", "/").rsplit("/", 1)[-1]
    if group_by == "roboflow":
        m = ROBOFLOW.match(name)
        return m.group("source") if m else name
    if group_by.startswith("regex:"):
        try:
            m = re.search(group_by[len("regex:"):], record.file_name)
        except re.error as e:
            raise ConfigError(f"cv.group_by: invalid regular expression ({e})") from None
        if m is None:
            raise ConfigError(f"cv.group_by: {group_by[6:]!r} does not match file_name {record.file_name!r}")
        return m.group(1) if m.groups() else m.group(0)
    if group_by.startswith("field:"):
        field = group_by[len("field:"):]
        if field not in record.extra:
            raise ConfigError(f"cv.group_by: image id {record.id} has no field {field!r}")
        return str(record.extra[field])
    raise ConfigError(f"cv.group_by must be roboflow, regex:PATTERN or field:NAME; got {group_by!r}")


def _labels(records: list[ImageRecord]) -> dict[int, int]:
    """Images per label in a group: each image counts once per class it contains (or once as EMPTY)."""
    counts: dict[int, int] = defaultdict(int)
    for rec in records:
        for label in set(rec.category_ids.tolist()) or {EMPTY}:
            counts[label] += 1
    return counts


def _iterative_stratification(items: list[dict[int, int]], sizes: list[int], n_folds: int,
                              rng: np.random.Generator) -> list[int]:
    """Fold of each item (an image or a group with `sizes` images and per-label image counts)."""
    sizes = np.asarray(sizes, dtype=float)
    desired = np.full(n_folds, sizes.sum() / n_folds)
    totals: dict[int, float] = defaultdict(float)
    for c in items:
        for label, n in c.items():
            totals[label] += n
    wanted = {label: np.full(n_folds, t / n_folds) for label, t in totals.items()}
    assignment = [-1] * len(items)
    remaining = set(range(len(items)))
    while remaining:
        left: dict[int, float] = defaultdict(float)
        for i in remaining:
            for label, n in items[i].items():
                left[label] += n
        label = min((l for l in left if left[l] > 0), key=lambda l: (left[l], l))
        members = [i for i in remaining if label in items[i]]
        for i in rng.permutation(sorted(members)):
            score = wanted[label]
            best = np.flatnonzero(score == score.max())
            if len(best) > 1:
                best = best[desired[best] == desired[best].max()]
            fold = int(rng.choice(best))
            assignment[i] = fold
            desired[fold] -= sizes[i]
            for l, n in items[i].items():
                wanted[l][fold] -= n
            remaining.discard(int(i))
    return assignment
