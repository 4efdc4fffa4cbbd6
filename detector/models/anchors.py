"""Anchors fitted to the data with k-means (distance 1 - IoU), and their fitness.

All shapes are (width, height) in the resized input pixels the model sees. Anchors are compared by
shape only (boxes and anchors centred on each other), the usual measure of how well anchors cover boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator

DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
IOU_GOOD = 0.5
MIN_LEVEL_BOXES = 10  # per anchor: a level with fewer boxes of its scale keeps default shapes


@dataclass(frozen=True)
class Fitness:
    mean_iou: float  # mean over boxes of the best anchor IoU
    bpr: float  # share of boxes whose best anchor IoU > 0.5 (best possible recall)

    def to_dict(self) -> dict[str, float]:
        return {"mean_iou": self.mean_iou, "bpr": self.bpr}


@dataclass(frozen=True)
class AnchorFit:
    shapes: tuple[tuple[tuple[float, float], ...], ...]  # per FPN level, (w, h) pairs
    fitted: Fitness
    default: Fitness
    num_boxes: int
    used: bool = True  # False: model.anchors auto kept torchvision's defaults, which fit these boxes as well

    @property
    def beats_default(self) -> bool:
        """The fitted anchors cover at least as many boxes (best possible recall) and fit them closer."""
        return self.fitted.bpr >= self.default.bpr and self.fitted.mean_iou > self.default.mean_iou

    def to_dict(self) -> dict:
        return {
            "shapes": [[list(s) for s in level] for level in self.shapes],
            "fitness": self.fitted.to_dict(), "default_fitness": self.default.to_dict(),
            "num_boxes": self.num_boxes, "used": self.used,
        }


class FittedAnchorGenerator(AnchorGenerator):
    """An AnchorGenerator whose cell anchors are explicit (w, h) pairs per level, not sizes x ratios."""

    def __init__(self, shapes: list[list[tuple[float, float]]] | tuple):
        nn.Module.__init__(self)
        self.shapes = tuple(tuple((float(w), float(h)) for w, h in level) for level in shapes)
        self.sizes = tuple(tuple(math.sqrt(w * h) for w, h in level) for level in self.shapes)
        self.aspect_ratios = tuple(tuple(h / w for w, h in level) for level in self.shapes)
        self.cell_anchors = [
            torch.tensor([[-w / 2, -h / 2, w / 2, h / 2] for w, h in level], dtype=torch.float32).round()
            for level in self.shapes
        ]

    def num_anchors_per_location(self) -> list[int]:
        return [len(level) for level in self.shapes]


def default_generator(num_levels: int) -> AnchorGenerator:
    """torchvision's default: one size per level (32 doubling), ratios 0.5/1/2."""
    sizes = tuple((DEFAULT_SIZES[0] * 2 ** i,) for i in range(num_levels))
    return AnchorGenerator(sizes=sizes, aspect_ratios=(DEFAULT_RATIOS,) * num_levels)


def generator_shapes(generator: AnchorGenerator) -> np.ndarray:
    """(M, 2) array of every cell anchor's (w, h) in a generator."""
    cells = torch.cat([c.float() for c in generator.cell_anchors])
    return torch.stack([cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]], 1).numpy()


def shape_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, M) IoU between (N, 2) box shapes and (M, 2) anchor shapes, centres aligned."""
    inter = np.minimum(boxes[:, None, 0], anchors[None, :, 0]) * np.minimum(boxes[:, None, 1], anchors[None, :, 1])
    union = boxes[:, None, 0] * boxes[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / np.maximum(union, 1e-12)


def fitness(boxes: np.ndarray, anchors: np.ndarray) -> Fitness:
    if len(boxes) == 0:
        return Fitness(0.0, 0.0)
    best = shape_iou(boxes, anchors).max(1)
    return Fitness(float(best.mean()), float((best > IOU_GOOD).mean()))


def kmeans_iou(boxes: np.ndarray, k: int, *, seed: int = 0, restarts: int = 5, iters: int = 100) -> np.ndarray:
    """k cluster shapes (k, 2) minimising 1 - IoU, sorted by area; k-means++ seeding, median update."""
    rng = np.random.default_rng(seed)
    best, best_score = None, -1.0
    for _ in range(restarts):
        centres = _seed_plus_plus(boxes, k, rng)
        for _ in range(iters):
            assign = shape_iou(boxes, centres).argmax(1)
            updated = np.array([np.median(boxes[assign == j], 0) if np.any(assign == j) else centres[j]
                                for j in range(k)])
            if np.allclose(updated, centres):
                break
            centres = updated
        score = shape_iou(boxes, centres).max(1).mean()
        if score > best_score:
            best, best_score = centres, score
    return best[np.argsort(best.prod(1))]


def evolve(boxes: np.ndarray, centres: np.ndarray, *, seed: int = 0, generations: int = 1000,
           sigma: float = 0.2, recall_weight: float = 3.0) -> np.ndarray:
    """Refine k-means shapes by random multiplicative mutation, keeping a change only when it raises
    mean best IoU + recall_weight * best possible recall. k-means alone optimises the mean and leaves odd
    boxes (cells cut thin at the image border) without any anchor above IoU 0.5; such a box only gets
    the RPN's low-quality match. On RBC this lifts recall above the defaults' at a small cost in mean IoU."""
    rng = np.random.default_rng(seed)

    def score(c: np.ndarray) -> float:
        best = shape_iou(boxes, c).max(1)
        return float(best.mean() + recall_weight * (best > IOU_GOOD).mean())

    best, best_score = centres.copy(), score(centres)
    for _ in range(generations):
        mutated = best * np.exp(rng.normal(0, sigma, best.shape) * (rng.random(best.shape) < 0.5))
        s = score(mutated)
        if s > best_score:
            best, best_score = mutated, s
    return best[np.argsort(best.prod(1))]


def _seed_plus_plus(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [boxes[rng.integers(len(boxes))]]
    for _ in range(1, k):
        dist = 1.0 - shape_iou(boxes, np.array(centres)).max(1)
        total = dist.sum()
        idx = rng.choice(len(boxes), p=dist / total) if total > 0 else rng.integers(len(boxes))
        centres.append(boxes[idx])
    return np.array(centres, dtype=np.float64)


def fit_anchors(
    boxes: np.ndarray, *, num_levels: int, per_level: int, seed: int = 0, max_boxes: int = 20000
) -> AnchorFit:
    """Fit `per_level` anchor shapes per FPN level to (N, 2) box shapes, each level on the boxes of its scale.

    Level i covers box sizes sqrt(w*h) within an octave of torchvision's default size for it, 32 * 2**i
    (stride 4 * 2**i; the first and last levels are open-ended). Its shapes come from k-means (1 - IoU)
    on those boxes, then a short evolution on mean IoU + best possible recall. A level with fewer than
    MIN_LEVEL_BOXES boxes per anchor keeps default shapes of its size. Fitting all boxes at once and
    splitting the sorted shapes into levels instead puts same-sized anchors on every level, so the few
    large objects of a dataset end up with anchors only on the coarsest grid (stride 64), where the RPN
    hardly finds them (on RBC: white cells AP50 0.11 vs 0.8+).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2)
    boxes = boxes[(boxes > 0).all(1)]
    if len(boxes) == 0:
        raise ValueError("no boxes to fit anchors to")
    rng = np.random.default_rng(seed)
    sample = boxes if len(boxes) <= max_boxes else boxes[rng.choice(len(boxes), max_boxes, replace=False)]
    levels = level_of(sample, num_levels)
    shapes = []
    for i in range(num_levels):
        band = sample[levels == i]
        if len(band) >= MIN_LEVEL_BOXES * per_level:
            centres = evolve(band, kmeans_iou(_spread(band, per_level), per_level, seed=seed), seed=seed)
        else:
            centres = default_shapes(i, per_level)
        shapes.append(tuple((round(float(w), 2), round(float(h), 2)) for w, h in centres))
    fitted = fitness(boxes, generator_shapes(FittedAnchorGenerator(shapes)))
    default = fitness(boxes, generator_shapes(default_generator(num_levels)))
    return AnchorFit(shapes=tuple(shapes), fitted=fitted, default=default, num_boxes=len(boxes))


def level_of(shapes: np.ndarray, num_levels: int) -> np.ndarray:
    """The FPN level whose default anchor size (32 * 2**level) is nearest, in octaves, to each box's size."""
    size = np.sqrt(shapes[:, 0] * shapes[:, 1])
    return np.clip(np.floor(np.log2(size / DEFAULT_SIZES[0]) + 0.5), 0, num_levels - 1).astype(int)


def default_shapes(level: int, per_level: int) -> np.ndarray:
    """`per_level` shapes of the level's default size, with aspect ratios spread from 0.5 to 2."""
    size = DEFAULT_SIZES[0] * 2 ** level
    ratios = np.geomspace(DEFAULT_RATIOS[0], DEFAULT_RATIOS[-1], per_level) if per_level > 1 else np.ones(1)
    return np.stack([size / np.sqrt(ratios), size * np.sqrt(ratios)], 1)  # ratio = h / w


def _spread(boxes: np.ndarray, k: int) -> np.ndarray:
    """With fewer distinct shapes than clusters, add scaled copies so k-means has k distinct points."""
    distinct = np.unique(boxes, axis=0)
    if len(distinct) >= k:
        return boxes
    scales = 2.0 ** np.linspace(-1, 1, int(math.ceil(k / len(distinct))) + 1)
    return np.concatenate([boxes] + [distinct * s for s in scales])
