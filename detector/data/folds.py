"""K-fold splits of a COCO index: plain, stratified by the classes in each image, or grouped (`auto`: grouped
when some photo has several images, by its file names, its bytes or its content; stratified otherwise).

`make_folds` returns the validation image ids of each fold. `kfold` is scikit-learn's shuffled KFold.
Stratification is iterative multi-label stratification (Sechidis et al., 2011): rarest label first, each
item goes to the fold that still wants that label most. Grouped folds apply the same procedure to groups
(e.g. Roboflow copies of one photo), so a group never straddles two folds and the classes stay balanced.
scikit-learn has no multi-label stratification; its StratifiedGroupKFold takes one label per image.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from ..errors import ConfigError
from .coco import CocoIndex
from .copies import components, copy_pairs, framed_copies
from .overlap import file_digest
from .records import ImageRecord

EMPTY = -1  # the "label" of an image without boxes, so negatives spread over folds too
ROBOFLOW = re.compile(r"^(?P<source>.+?)_(?:png|jpe?g|bmp|tiff?|webp)\.rf\.[0-9a-zA-Z]+\.\w+$", re.IGNORECASE)


@dataclass(frozen=True)
class PhotoGroups:
    """Which images show one photo: a key per image (in index order)."""

    keys: list[str]
    joined_by_content: list[tuple[str, str]]  # name groups that only their content joined (one pair each)

    @property
    def copied(self) -> int:
        """Photos with more than one image."""
        return sum(1 for n in Counter(self.keys).values() if n > 1)


def make_folds(index: CocoIndex, *, n_folds: int, strategy: str, group_by: str = "roboflow",
               similarity: float, seed: int = 0) -> list[list[int]]:
    """Image ids of the validation part of each fold (sorted), for `strategy` auto, kfold, stratified or group.
    `n_folds` is at least 2: cv.folds' own check (config.py). `similarity` is data.copy_similarity."""
    strategy, _ = resolve_strategy(index, strategy, group_by, similarity)
    records = index.images
    if strategy == "group":
        keys = photo_groups(index, group_by, similarity).keys
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


def resolve_strategy(index: CocoIndex, strategy: str, group_by: str, similarity: float) -> tuple[str, str | None]:
    """The strategy `auto` stands for, and a warning when a chosen one would leak copies across folds.

    auto: `group` when cv.group_by names a grouping of its own (regex:, field:) or when some photo has
    several images (Roboflow copies `NAME_png.rf.HASH.jpg`, identical files, or copies by content);
    `stratified` otherwise.
    """
    copied = photo_groups(index, "roboflow", similarity).copied
    if strategy == "auto":
        return ("group" if group_by != "roboflow" or copied else "stratified"), None
    if strategy != "group" and copied:
        return strategy, (f"{index.path}: {copied} photos have several images (Roboflow copies, identical files "
                          f"or copies by content); cv.strategy={strategy} puts copies of one photo in different "
                          "folds, so validation scores are inflated; use cv.strategy=auto or group")
    return strategy, None


def photo_groups(index: CocoIndex, group_by: str, similarity: float) -> PhotoGroups:
    """Images that show one photo: one key of `group_by` (see group_key), the same bytes, or copies by
    content (data/copies.py, at `similarity`), joined transitively. A group is named by its first key."""
    names = [group_key(r, group_by) for r in index.images]
    first: dict[str, int] = {}
    links = [(first.setdefault(n, i), i) for i, n in enumerate(names)]
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(index.images):
        by_size[r.path.stat().st_size].append(i)
    by_digest: dict[str, int] = {}
    for i in (i for same in by_size.values() if len(same) > 1 for i in same):  # only sizes seen twice are read
        links.append((by_digest.setdefault(file_digest(index.images[i].path), i), i))
    paths = [r.path for r in index.images]
    content = [(p.a, p.b) for p in framed_copies(copy_pairs(index.fingerprints, None, similarity), paths, paths,
                                                 similarity)]
    labels = components(len(names), links + content)
    key: dict[int, str] = {}
    for i in sorted(range(len(names)), key=lambda i: names[i]):
        key.setdefault(int(labels[i]), names[i])
    joined = sorted({(min(names[a], names[b]), max(names[a], names[b])) for a, b in content
                     if names[a] != names[b]})
    return PhotoGroups([key[int(c)] for c in labels], joined)


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
