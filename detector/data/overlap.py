"""Images that two splits share: the same file, or a copy of it under another name."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DatasetError
from .coco import CocoIndex


def check_disjoint(splits: list[tuple[str, CocoIndex]]) -> None:
    """Each split shares no image with the splits before it: neither a path nor a file with the same bytes
    (a copy under another name is the same image, and scoring on it measures memory, not detection)."""
    for i, (name, split) in enumerate(splits[1:], start=1):
        for earlier, other in splits[:i]:
            shared = shared_images(other, split)
            if shared:
                here, there = shared[0]
                example = here if here.resolve() == there.resolve() else f"{here}, the same bytes as {there}"
                raise DatasetError(f"{name} ({split.path}) shares {len(shared)} image(s) with {earlier} (e.g. "
                                   f"{example}); each of data.train, data.val and data.test needs images of its own")


def shared_images(a: CocoIndex, b: CocoIndex) -> list[tuple[Path, Path]]:
    """(file of b, file of a) pairs that are one image: the same path, or the same size and sha256. Only
    files whose size another split has are read."""
    by_size: dict[int, list[Path]] = {}
    for r in a.images:
        size = _size(r.path)
        if size is not None:
            by_size.setdefault(size, []).append(r.path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = hashlib.file_digest(path.open("rb"), "sha256").hexdigest()
        return digests[path]

    pairs = []
    for r in b.images:
        candidates = by_size.get(_size(r.path), [])
        same = next((c for c in candidates if c.resolve() == r.path.resolve()), None)
        if same is None and candidates:
            same = next((c for c in candidates if digest(c) == digest(r.path)), None)
        if same is not None:
            pairs.append((r.path, same))
    return pairs


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # a missing file is reported where it is read
