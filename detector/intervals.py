"""How much a metric moves with the images it was measured on: percentile bootstrap intervals over images.

Every resample draws the split's images with replacement (numpy's generator, a fixed seed) and recomputes
COCO's mAP, mAP@0.5 and mAP@0.75 and the precision, recall, F1 and score at the operating point from
per-image parts matched once (`ImageParts`): COCO's own matching at its ten IoU thresholds (top 100
detections per image and class, crowd boxes ignored) and its accumulation, weighted by how often each image
was drawn. With every image drawn once this is COCO's mAP (tested against faster-coco-eval).

Two models scored on the same images are compared on the same resamples (`compare`): the interval of their
difference, and a word for it: better, worse, or within noise (the interval holds 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .boxes import xywh_to_xyxy
from .config import ScoreConfig
from .metrics import Thresholds, f_beta, match_image

IOU_THRS = np.linspace(0.5, 0.95, 10)  # COCO's
RECALL_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
KEYS = ("map", "map_50", "map_75", "precision", "recall", "f1", "score")
PAIRED = ("map", "map_50", "map_75", "f1", "score")  # what two models on the same images are compared on
LEVEL = 0.95
RESAMPLES = 2000
_CHUNK = 50


@dataclass(frozen=True)
class Interval:
    """A 95% percentile bootstrap interval of one metric."""

    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Difference:
    """model A minus model B on the same images: the difference, its paired interval and the word for it."""

    metric: str
    a: float
    b: float
    interval: Interval

    @property
    def value(self) -> float:
        return self.a - self.b

    @property
    def verdict(self) -> str:
        if self.interval.low > 0:
            return "better"
        if self.interval.high < 0:
            return "worse"
        return "within noise"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "difference": self.value,
                "interval": self.interval.to_list(), "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Difference":
        return cls(d["metric"], float(d["a"]), float(d["b"]), Interval(*map(float, d["interval"])))


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: resamples of the images, the generator's seed."""

    resamples: int = RESAMPLES
    seed: int = 0

    def weights(self, images: int) -> np.ndarray:
        """(resamples, images): how often each resample draws each image."""
        rng = np.random.default_rng(self.seed)
        drawn = rng.integers(0, images, size=(self.resamples, images))
        return np.stack([np.bincount(row, minlength=images) for row in drawn]).astype(np.float64)

    def describe(self, images: int) -> str:
        return f"{int(LEVEL * 100)}% bootstrap over {images} images, {self.resamples} resamples, seed {self.seed}"


@dataclass(frozen=True)
class _ClassParts:
    """One category's detections over every image, in COCO's accumulation order (by score, stable)."""

    image: np.ndarray  # (D,) index of each detection's image
    tp: np.ndarray  # (T, D) matched a box at IoU threshold t
    counted: np.ndarray  # (T, D) neither matched to an ignored (crowd) box nor ignored
    num_gt: np.ndarray  # (N,) non-ignored boxes of this category per image


@dataclass(frozen=True)
class ImageParts:
    """What every metric of one model's predictions on one split is summed from, per image."""

    images: int
    classes: list[_ClassParts]
    counts: np.ndarray  # (N, 3) tp, fp, fn per image at the operating point
    score: ScoreConfig

    @classmethod
    def of(cls, gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], thresholds: Thresholds,
           iou_threshold: float, score: ScoreConfig) -> "ImageParts":
        image_ids = sorted({int(i["id"]) for i in gt["images"]})
        position = {i: n for n, i in enumerate(image_ids)}
        classes = [_class_parts(gt, results, int(c["id"]), position) for c in sorted(gt["categories"],
                                                                                      key=lambda c: c["id"])]
        counts = np.zeros((len(image_ids), 3), np.float64)
        for image_id, tp, fp, fn in match_image(gt, results, iou_threshold, thresholds):
            if image_id in position:
                counts[position[image_id]] += (tp, fp, fn)
        return cls(len(image_ids), classes, counts, score)

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of KEYS for each row of `weights` (resamples, images)."""
        ap = np.stack([_average_precision(c, weights) for c in self.classes], axis=1) if self.classes else \
            np.full((len(weights), 0, len(IOU_THRS)), np.nan)  # (B, K, T)
        out = {"map": _nanmean(ap.reshape(len(weights), -1)), "map_50": _nanmean(ap[:, :, 0]),
               "map_75": _nanmean(ap[:, :, 5])}
        tp, fp, fn = (weights @ self.counts).T
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
        out.update(precision=precision, recall=recall, f1=_f(precision, recall, 1.0))
        out["score"] = self.score.w_map * out["map_50"] + self.score.w_f1 * _f(precision, recall, self.score.beta)
        return out


def _f(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    return np.array([f_beta(p, r, beta) for p, r in zip(precision, recall)])


def _nanmean(values: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(1)
    n = valid.sum(1)
    return np.divide(total, n, out=np.zeros_like(total), where=n > 0)  # COCO: no valid class scores 0


def _class_parts(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], category_id: int,
                 position: dict[int, int]) -> _ClassParts:
    boxes: dict[int, list] = {i: [] for i in position}
    for a in gt["annotations"]:
        if a["category_id"] == category_id:
            boxes[a["image_id"]].append(a)
    dets: dict[int, list] = {i: [] for i in position}
    for r in results:
        if r["category_id"] == category_id and r["image_id"] in dets:
            dets[r["image_id"]].append(r)
    parts = [_match_coco(boxes[i], dets[i]) for i in position]  # images in id order, as COCO accumulates
    scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    image = np.concatenate([np.full(len(p[0]), n) for n, p in enumerate(parts)]).astype(np.int64)[order] \
        if parts else np.zeros(0, np.int64)
    tp = np.concatenate([p[1] for p in parts], axis=1)[:, order] if parts else np.zeros((len(IOU_THRS), 0), bool)
    ignored = np.concatenate([p[2] for p in parts], axis=1)[:, order] if parts else tp
    num_gt = np.array([p[3] for p in parts], np.float64)
    return _ClassParts(image, tp & ~ignored, ~ignored, num_gt)


def _match_coco(anns: list[Mapping[str, Any]], dets: list[Mapping[str, Any]]):
    """COCO's evaluateImg for area 'all': (scores (D,), tp (T, D), ignored (T, D), non-ignored boxes)."""
    ignore = np.array([bool(a.get("iscrowd", 0)) or not 0 <= _area(a) <= 1e10 for a in anns], bool)
    gt_order = np.argsort(ignore, kind="mergesort")
    anns, ignore = [anns[i] for i in gt_order], ignore[gt_order]
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    det_order = np.argsort([-float(d["score"]) for d in dets], kind="mergesort")[:MAX_DETS]
    dets = [dets[i] for i in det_order]
    scores = np.array([float(d["score"]) for d in dets], np.float64)
    tp = np.zeros((len(IOU_THRS), len(dets)), bool)
    ignored = np.zeros_like(tp)
    if dets and anns:
        iou = _coco_iou(np.array([d["bbox"] for d in dets], np.float64),
                        np.array([a["bbox"] for a in anns], np.float64), crowd)
        for t, thr in enumerate(IOU_THRS):
            taken = _greedy(iou, ignore, crowd, thr)
            tp[t] = taken >= 0
            ignored[t] = (taken >= 0) & ignore[np.maximum(taken, 0)]
    return scores, tp, ignored, int((~ignore).sum())


def _greedy(iou: np.ndarray, ignore: np.ndarray, crowd: np.ndarray, thr: float) -> np.ndarray:
    """The box each detection (by score) takes as COCO's evaluateImg does: its best free box at >= thr,
    a real box before an ignored one, crowd boxes never used up. -1 for none."""
    matched = np.zeros(iou.shape[1], bool)
    taken = np.full(iou.shape[0], -1)
    for d in range(iou.shape[0]):
        best, m = min(thr, 1 - 1e-10), -1
        for g in range(iou.shape[1]):
            if matched[g] and not crowd[g]:
                continue
            if m > -1 and not ignore[m] and ignore[g]:
                break
            if iou[d, g] < best:
                continue
            best, m = iou[d, g], g
        if m > -1:
            taken[d] = m
            matched[m] = True
    return taken


def _coco_iou(dets: np.ndarray, anns: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's box IoU of xywh boxes; a crowd box's overlap is over the detection's area alone."""
    d, g = xywh_to_xyxy(dets), xywh_to_xyxy(anns)
    lt = np.maximum(d[:, None, :2], g[None, :, :2])
    rb = np.minimum(d[:, None, 2:], g[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_d, area_g = dets[:, 2] * dets[:, 3], anns[:, 2] * anns[:, 3]
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(a: Mapping[str, Any]) -> float:
    return float(a["area"]) if "area" in a else float(a["bbox"][2] * a["bbox"][3])


def _average_precision(c: _ClassParts, weights: np.ndarray) -> np.ndarray:
    """(B, T) COCO's AP of one category under each row of weights; NaN where the row holds none of its boxes."""
    rows, thresholds, dets = len(weights), len(IOU_THRS), len(c.image)
    num_gt = weights @ c.num_gt
    if dets == 0:
        return np.where(num_gt[:, None] > 0, 0.0, np.nan) * np.ones((1, thresholds))
    w = weights[:, c.image][:, None, :]  # (B, 1, D)
    tp = np.cumsum(w * c.tp[None], axis=2)
    fp = np.cumsum(w * (c.counted & ~c.tp)[None], axis=2)
    recall = tp / np.maximum(num_gt, 1e-12)[:, None, None]
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
    offset = 2.0 * np.arange(rows * thresholds).reshape(rows, thresholds, 1)  # each row searched on its own
    found = np.searchsorted((recall + offset).ravel(), (RECALL_THRS[None, None] + offset).ravel(), side="left")
    found = found.reshape(rows, thresholds, len(RECALL_THRS)) - np.arange(rows * thresholds).reshape(
        rows, thresholds, 1) * dets
    inside = found < dets
    q = np.where(inside, np.take_along_axis(precision, np.minimum(found, dets - 1), axis=2), 0.0)
    return np.where(num_gt[:, None] > 0, q.mean(2), np.nan)


def resampled(parts: ImageParts, bootstrap: Bootstrap) -> dict[str, np.ndarray]:
    """Each metric over the bootstrap's resamples of the images (in chunks, to bound memory)."""
    weights = bootstrap.weights(parts.images)
    chunks = [parts.metrics(weights[i:i + _CHUNK]) for i in range(0, len(weights), _CHUNK)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in KEYS}


def interval(values: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def intervals(parts: ImageParts, bootstrap: Bootstrap) -> dict[str, Interval]:
    """A bootstrap interval of every metric of KEYS."""
    if parts.images == 0 or bootstrap.resamples == 0:
        return {}
    return {k: interval(v) for k, v in resampled(parts, bootstrap).items()}


def compare(a: ImageParts, b: ImageParts, bootstrap: Bootstrap, keys: Sequence[str] = KEYS) -> dict[str, Difference]:
    """A minus B for each metric of `keys`, both scored on the same resamples of the same images."""
    if a.images != b.images:
        raise ValueError(f"paired comparison needs the same images; got {a.images} and {b.images}")
    if a.images == 0:
        return {}
    ones = np.ones((1, a.images))
    point_a, point_b = a.metrics(ones), b.metrics(ones)
    if bootstrap.resamples == 0:  # no intervals: the difference alone decides
        return {k: Difference(k, float(point_a[k][0]), float(point_b[k][0]),
                              Interval(*[float(point_a[k][0] - point_b[k][0])] * 2)) for k in keys}
    ra, rb = resampled(a, bootstrap), resampled(b, bootstrap)
    return {k: Difference(k, float(point_a[k][0]), float(point_b[k][0]), interval(ra[k] - rb[k])) for k in keys}


def format_interval(value: float, iv: Interval | Sequence[float] | None) -> str:
    """0.6710 [0.6123, 0.7204]"""
    if iv is None or math.isnan(value):
        return f"{value:.4f}"
    low, high = iv.to_list() if isinstance(iv, Interval) else iv
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"
