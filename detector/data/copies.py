"""Copies of one photo: the same picture flipped, rotated, resized, re-encoded or brightened, under any name.

An image's fingerprint is the low-frequency part of its thumbnail's DCT (pHash's coefficients): grayscale,
shrunk to SIDE x SIDE, the first KEEP x KEEP coefficients without the mean, each scaled by its frequency
(natural images put most energy in the lowest ones, which alone would make any two photos with a bright
top look alike), as a unit vector. Two images are copies when the correlation of their fingerprints,
taken over the eight flips and rotations of one of them, is at least data.copy_similarity. The eight views
cost nothing: flipping an image negates its odd-frequency coefficients and transposing it transposes them.
Compared by correlation rather than by bits, the fingerprint also matches Roboflow copies whose boxes were
augmented one by one (bench/copies.py measures both kinds).

Comparing all pairs is one matrix product per chunk of images: about a minute for 20,000 images on 2 cores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .images import read_image

SIDE, KEEP = 32, 16
# (transposed, sign of the row frequencies, sign of the column frequencies) -> what was done to the image
VIEWS = {(False, 1, 1): "as is", (False, 1, -1): "flipped left-right", (False, -1, 1): "flipped upside down",
         (False, -1, -1): "rotated 180 degrees", (True, 1, 1): "transposed",
         (True, -1, 1): "rotated 90 degrees counterclockwise", (True, 1, -1): "rotated 90 degrees clockwise",
         (True, -1, -1): "transposed across the other diagonal"}
_CHUNK = 256
TOLERANCE = 1e-4  # float32 products of one fingerprint with itself reach 0.99997: a threshold of 1 means "same"


@dataclass(frozen=True)
class CopyPair:
    """Image `a` of one list and image `b` of another (or the same) list show one photo."""

    a: int
    b: int
    similarity: float
    view: str  # what turns a into b, e.g. "flipped left-right"


def fingerprint(path: str | Path) -> np.ndarray:
    """The (KEEP, KEEP) fingerprint of one image file (unit norm; all zeros for a flat image)."""
    return _print(_gray(path))


def _gray(path: str | Path) -> np.ndarray:
    return cv2.cvtColor(read_image(path, draft=2 * SIDE), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _print(gray: np.ndarray) -> np.ndarray:
    thumb = cv2.resize(gray, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(thumb)[:KEEP, :KEEP]
    u = np.arange(KEEP, dtype=np.float32)
    coeffs = coeffs * np.hypot(u[:, None], u[None, :])  # also zeroes the mean (0, 0)
    norm = float(np.linalg.norm(coeffs))
    return coeffs / norm if norm > 1e-6 * SIDE else np.zeros_like(coeffs)


def framed_copies(pairs: list[CopyPair], paths_a: Sequence[Path], paths_b: Sequence[Path], threshold: float
                  ) -> list[CopyPair]:
    """`pairs` (of images `paths_a` and `paths_b`) less those alike only by their frame: where both images
    lose the same strips to `trim_borders` (letterbox bars, a white footer with a watermark), what lies
    inside is compared instead, in the pair's view. Otherwise the step from a strip to the photo dominates
    the fingerprint, and distinct photos sharing a frame looked like one (4 video frames, 10 stock photos on
    two real sets). Only where both share a frame: a brightened copy whose sky turns into a white strip is
    still its photo's copy."""
    found: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def framed(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in found:
            gray = _gray(path)
            inside, strips = trim_borders(gray)
            found[path] = (_print(inside), strips)
        return found[path]

    kept = []
    views = list(VIEWS.values())
    for p in pairs:
        (print_a, strips_a), (print_b, strips_b) = framed(paths_a[p.a]), framed(paths_b[p.b])
        if not ((strips_a >= 0.03) & (np.abs(strips_a - strips_b) <= 0.05)).any():
            kept.append(p)  # no strip of one size on one side of both: the whole images' likeness stands
            continue
        inside = float((_views(print_a[None])[views.index(p.view), 0] * print_b).sum())
        if inside >= threshold - TOLERANCE:
            kept.append(CopyPair(p.a, p.b, round(inside, 4), p.view))
    return kept


def trim_borders(gray: np.ndarray, tolerance: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """`gray` without the uniform strips along its edges (a footer's few text rows bridged), and the share
    of the image each strip took (top, bottom, left, right)."""
    height, width = gray.shape
    top, bottom = _strip(gray, tolerance), _strip(gray[::-1], tolerance)
    left, right = _strip(gray.T, tolerance), _strip(gray.T[::-1], tolerance)
    if height - top - bottom < 8 or width - left - right < 8:  # a flat image, or nothing but strips
        return gray, np.zeros(4)
    strips = np.array([top / height, bottom / height, left / width, right / width])
    return gray[top:height - bottom, left:width - right], strips


def _strip(lines: np.ndarray, tolerance: float) -> int:
    """How many of the first `lines` (rows, from an edge) form a strip of the edge's colour: lines whose
    30th and 70th percentiles lie within `tolerance` of it, across gaps of at most 6% of the lines (the text
    on a footer), up to 45% of them."""
    edge = float(np.median(lines[0]))
    lows, highs = np.percentile(lines[: int(len(lines) * 0.45)], [30, 70], axis=1)
    flat = (np.abs(lows - edge) <= tolerance) & (np.abs(highs - edge) <= tolerance)
    cut, gap = 0, 0
    for i, is_flat in enumerate(flat):
        if is_flat:
            cut, gap = i + 1, 0
        else:
            gap += 1
            if gap > max(2, 0.06 * len(lines)):
                break
    return cut


def fingerprints(paths: Iterable[str | Path]) -> np.ndarray:
    """(N, KEEP, KEEP) fingerprints of the files, in order."""
    prints = [fingerprint(p) for p in paths]
    return np.stack(prints) if prints else np.zeros((0, KEEP, KEEP), np.float32)


def copy_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float) -> list[CopyPair]:
    """Pairs (i of a, j of b) at or above `threshold`; with b None, the pairs i < j within a."""
    within = b is None
    b = a if within else b
    if not len(a) or not len(b):
        return []
    flat_b = b.reshape(len(b), -1).T
    pairs = []
    for start in range(0, len(a), _CHUNK):
        views = _views(a[start:start + _CHUNK])  # (8, n, KEEP, KEEP)
        sims = views.reshape(len(VIEWS), len(views[0]), -1) @ flat_b  # (8, n, len(b))
        best, which = sims.max(0), sims.argmax(0)
        if within:  # each pair once, and no image with itself
            best[start + np.arange(len(best))[:, None] >= np.arange(len(b))[None, :]] = -np.inf
        for i, j in zip(*np.nonzero(best >= threshold - TOLERANCE)):
            pairs.append(CopyPair(start + int(i), int(j), round(float(best[i, j]), 4),
                                  list(VIEWS.values())[int(which[i, j])]))
    return pairs


def components(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """The connected component of each of n items linked by `pairs` (a label per item)."""
    pairs = list(pairs)
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _views(prints: np.ndarray) -> np.ndarray:
    """The fingerprints of the eight flips and rotations of each image, in VIEWS order."""
    odd = (-1.0) ** np.arange(KEEP)  # a flip negates the odd frequencies along its axis
    out = []
    for transposed, row, col in VIEWS:
        p = prints.transpose(0, 2, 1) if transposed else prints
        out.append(p * np.outer(odd if row < 0 else np.ones(KEEP), odd if col < 0 else np.ones(KEEP)))
    return np.stack(out).astype(np.float32)
