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
from typing import Iterable

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


@dataclass(frozen=True)
class CopyPair:
    """Image `a` of one list and image `b` of another (or the same) list show one photo."""

    a: int
    b: int
    similarity: float
    view: str  # what turns a into b, e.g. "flipped left-right"


def fingerprint(path: str | Path) -> np.ndarray:
    """The (KEEP, KEEP) fingerprint of one image file (unit norm; all zeros for a flat image)."""
    rgb = read_image(path, draft=2 * SIDE)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    thumb = cv2.resize(gray, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(thumb)[:KEEP, :KEEP]
    u = np.arange(KEEP, dtype=np.float32)
    coeffs = coeffs * np.hypot(u[:, None], u[None, :])  # also zeroes the mean (0, 0)
    norm = float(np.linalg.norm(coeffs))
    return coeffs / norm if norm > 1e-6 * SIDE else np.zeros_like(coeffs)


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
        for i, j in zip(*np.nonzero(best >= threshold)):
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
