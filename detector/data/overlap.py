"""Images that two splits share: the same file, a copy of its bytes under another name, or the same photo
flipped, rotated or resized (data/copies.py). Scoring on a copy of a training image measures memory, not
detection."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .coco import CocoIndex
from .copies import copy_pairs, framed_copies

LISTED = 3  # copies named in an error or a warning; `detector check-data` lists them all


@dataclass(frozen=True)
class SharedImage:
    """An image of one split that is an image of another split."""

    image: Path  # in the later split
    copy_of: Path  # in the earlier split
    how: str  # "the same file", "the same bytes", or the view and similarity of a content copy
    similarity: float = 1.0

    def __str__(self) -> str:
        return f"{self.image} (in both)" if self.how == "the same file" else f"{self.image} is {self.copy_of} ({self.how})"


def check_disjoint(split: tuple[str, CocoIndex], earlier: list[tuple[str, CocoIndex]], similarity: float,
                   error_at: float | None = None) -> list[str]:
    """Warnings about `split`'s images that show a photo of an earlier split (content similarity at least
    `similarity`); raises DatasetError for a shared file or bytes, and, with `error_at` (data.test), for
    copies at least that similar."""
    name, index = split
    warnings = []
    for other_name, other in earlier:
        files, content = shared(other, index, similarity)
        fix = (f"each of data.train, data.val and data.test needs photos of its own: remove the copies from "
               f"{index.path} or {other.path} (`detector check-data {other.path} {index.path}` lists them all)")
        if files:
            raise DatasetError(f"{name} ({index.path}) shares {len(files)} image file(s) with {other_name}: "
                               f"{_listed(files)}; {fix}")
        certain = [s for s in content if error_at is not None and s.similarity >= error_at]
        if certain:
            raise DatasetError(f"{name} ({index.path}) holds {len(certain)} copies of {other_name} photos, "
                               f"flipped, rotated or resized (content similarity >= data.test_copy_error "
                               f"{error_at}): {_listed(certain)}; a test score on them is partly a training "
                               f"score. {fix}")
        if content:
            warnings.append(f"{name} ({index.path}) holds {len(content)} image(s) that probably show a photo of "
                            f"{other_name} (content similarity >= data.copy_similarity {similarity}): "
                            f"{_listed(content)}; if they are copies, its scores are inflated by them. {fix}")
    return warnings


def shared_across(indices: list[CocoIndex], similarity: float) -> list[tuple[CocoIndex, CocoIndex, SharedImage]]:
    """(file, earlier file, shared image) for each image of a file that is an image of an earlier one: the
    same file, the same bytes, or a copy by content (what `detector check-data A B C` lists)."""
    found = []
    for i, later in enumerate(indices):
        for earlier in indices[:i]:
            files, content = shared(earlier, later, similarity)
            found += [(later, earlier, s) for s in files + content]
    return found


def shared(a: CocoIndex, b: CocoIndex, similarity: float) -> tuple[list[SharedImage], list[SharedImage]]:
    """Images of b that are files of a (shared_files), and the others that are content copies of a photo
    of a (shared_content)."""
    files = shared_files(a, b)
    same = {s.image for s in files}
    return files, [s for s in shared_content(a, b, similarity) if s.image not in same]


def shared_files(a: CocoIndex, b: CocoIndex) -> list[SharedImage]:
    """Images of b that are files of a: the same path, or the same size and sha256. Only files whose size
    the other split has are read."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for r in a.images:
        size = _size(r.path)
        if size is not None:
            by_size[size].append(r.path)
    shared = []
    for r in b.images:
        candidates = by_size.get(_size(r.path), [])
        same = next((c for c in candidates if c.resolve() == r.path.resolve()), None)
        if same is not None:
            shared.append(SharedImage(r.path, same, "the same file"))
            continue
        same = next((c for c in candidates if file_digest(c) == file_digest(r.path)), None)
        if same is not None:
            shared.append(SharedImage(r.path, same, "the same bytes"))
    return shared


def shared_content(a: CocoIndex, b: CocoIndex, similarity: float) -> list[SharedImage]:
    """Images of b whose content is a photo of a, each with its most similar image of a."""
    best: dict[int, tuple[float, int, str]] = {}
    pairs = copy_pairs(a.fingerprints, b.fingerprints, similarity)
    for p in framed_copies(pairs, [r.path for r in a.images], [r.path for r in b.images], similarity):
        if p.b not in best or p.similarity > best[p.b][0]:
            best[p.b] = (p.similarity, p.a, p.view)
    return [SharedImage(b.images[i].path, a.images[j].path, f"{view}, similarity {s:.2f}", s)
            for i, (s, j, view) in sorted(best.items())]


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listed(shared: list[SharedImage]) -> str:
    more = f", and {len(shared) - LISTED} more" if len(shared) > LISTED else ""
    return "; ".join(map(str, shared[:LISTED])) + more


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # a missing file is reported where it is read
