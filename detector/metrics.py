"""Detection metrics on COCO dicts: COCO mAP (faster-coco-eval), precision/recall/F at a score threshold, and
the score that ranks models.

Inputs are a COCO ground-truth dict (xywh pixels) and a COCO results list
([{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]). mAP uses every prediction;
precision/recall/F use only predictions scoring at least the threshold (per class where `class_thresholds`
names one).

The score (the one formula; config `score`):

    score = w_map * mAP@0.5 + w_f1 * F_beta,   F_beta = (1 + beta^2) * P * R / (beta^2 * P + R)

with P and R the precision and recall at the operating point (IoU >= eval.iou_threshold). beta = 1 is F1;
beta = 2 counts recall four times as much as precision (recall-first), beta = 0.5 the reverse.

While training and selecting (every epoch, every fold, every trial) the operating point is the threshold that
maximises F_beta on the split being scored (`score_threshold=None`), so epochs and trials are compared as
models, not by how well one fixed threshold happens to suit them; the chosen threshold is the `threshold`
metric. Published models get their own operating point tuned on data.val (operating_point.py).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import defaultdict
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .boxes import box_iou, xywh_to_xyxy
from . import config as config_mod
from .config import EnsembleConfig, ScoreConfig

# COCO's object sizes, by area in the original image's pixels: small < 32^2 <= medium < 96^2 <= large
SIZES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, math.inf)}
SIZE_KEYS = ("map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium",
             "mar_large")
COCO_KEYS = ("map", "map_50", "map_75", *SIZE_KEYS)  # the twelve numbers of COCO's summary, in its order
METRIC_KEYS = ("map", "map_50", "map_75", "precision", "recall", "f1", "score", "threshold", *SIZE_KEYS)


def evaluate_detections(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    score_threshold: float | None = 0.5,
    iou_threshold: float = 0.5,
    score: ScoreConfig | None = None,
    class_thresholds: Mapping[int, float] | None = None,
) -> "Metrics":
    """All metrics a user reads (Metrics: map, map_50, map_75, precision, recall, f1, f_beta, score,
    threshold, and per class name ap, ap50, precision, recall, f1, num_gt). `class_thresholds` (category id ->
    threshold) replaces `score_threshold` for the classes it names; `score_threshold=None` is the threshold
    that maximises F_beta over all classes on these predictions (selection, see the module docstring)."""
    score = score or ScoreConfig()
    matched = match(gt, results, iou_threshold)
    if score_threshold is None:
        score_threshold = matched.best_threshold(score.beta)
    return metrics_from(coco_map(gt, results), matched, gt, score,
                        Thresholds(score_threshold, dict(class_thresholds or {})))


@dataclass(frozen=True)
class Thresholds:
    """The operating point: a score threshold, and per class (category id) ones that replace it."""

    default: float
    per_class: dict[int, float]

    def of(self, category_id: int) -> float:
        return self.per_class.get(category_id, self.default)

    def to_dict(self) -> dict[str, Any]:
        """{"score_threshold", "class_thresholds"}: the form every operating point and ensemble.json holds."""
        return {"score_threshold": self.default,
                "class_thresholds": {str(k): v for k, v in sorted(self.per_class.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Thresholds | None":
        """The thresholds a record holds in to_dict's form; None when it records none."""
        if d.get("score_threshold") is None:
            return None
        return cls(float(d["score_threshold"]), {int(k): float(v) for k, v in (d.get("class_thresholds") or {}).items()})


@dataclass
class OperatingPoint:
    """How published models are used, and what that scores where it was chosen: thresholds and WBF settings.
    The one form of operating_point.json (a cv run) and of ensemble.json's operating_point (a study)."""

    thresholds: Thresholds
    ensemble: EnsembleConfig
    score: float  # at this point, on the predictions it was chosen from
    configured_score: float  # with the configured ensemble.* and eval.score_threshold
    metrics: "Metrics"
    images: int  # how many images it was chosen on
    source: str  # which predictions those were
    evaluations: int = 1
    seconds: float = 0.0
    members: list[int] | None = None  # which of the candidate models are fused (by index); None: all of them

    def to_dict(self) -> dict[str, Any]:
        return {**self.thresholds.to_dict(), "ensemble": dataclasses.asdict(self.ensemble), "score": self.score,
                "configured_score": self.configured_score, "images": self.images, "source": self.source,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3), "members": self.members,
                "metrics": self.metrics.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OperatingPoint":
        ensemble = config_mod.ensemble_from_dict(d["ensemble"], "operating point")
        return cls(Thresholds.from_dict(d), ensemble, float(d["score"]), float(d["configured_score"]),
                   Metrics.from_dict(d.get("metrics") or {}), int(d.get("images", 0)), d.get("source", ""), int(d.get("evaluations", 1)),
                   float(d.get("seconds", 0.0)),
                   None if d.get("members") is None else [int(i) for i in d["members"]])


def metrics_from(coco: "CocoMap", matched: "Matches", gt: dict[str, Any], score: ScoreConfig,
                 thresholds: Thresholds) -> "Metrics":
    """evaluate_detections' Metrics from its parts (mAP, matches), so a caller that tries many thresholds on
    one set of predictions computes mAP and the matching once."""
    counts = matched.counts(thresholds)
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    p, r, f1 = _prf(*total)
    per_class = {}
    for c in gt["categories"]:
        cid = c["id"]
        tp, fp, fn = counts.get(cid, (0, 0, 0))
        cp, cr, cf = _prf(tp, fp, fn)
        ap = coco.per_class.get(cid) or ClassMap.empty()
        per_class[c["name"]] = ClassMetrics(cid, ap.ap, ap.ap50, cp, cr, cf, tp + fn, thresholds.of(cid), ap.by_size)
    fb = f_beta(p, r, score.beta)
    return Metrics(coco.map, coco.map_50, coco.map_75, p, r, f1, fb, composite_score(coco.map_50, fb, score),
                   thresholds.default, dict(coco.by_size), per_class)


CLASS_SIZE_KEYS = ("ap_small", "ap_medium", "ap_large", "ar_100", "ar_small", "ar_medium", "ar_large")


@dataclass(frozen=True)
class ClassMetrics:
    """One class's numbers: COCO AP (and at IoU 0.5, by size, and AR), and precision, recall and F1 at its
    threshold, with its count of ground-truth boxes."""

    category_id: int
    ap: float
    ap50: float
    precision: float
    recall: float
    f1: float
    num_gt: int
    score_threshold: float
    by_size: dict[str, float] = dataclasses.field(default_factory=dict)  # CLASS_SIZE_KEYS; NaN: no box that size

    def size(self, key: str) -> float:
        return self.by_size.get(key, math.nan)

    def to_dict(self) -> dict[str, Any]:
        return {"category_id": self.category_id, "ap": self.ap, "ap50": self.ap50, **self.by_size,
                "precision": self.precision, "recall": self.recall, "f1": self.f1, "num_gt": self.num_gt,
                "score_threshold": self.score_threshold}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassMetrics":
        return cls(int(d.get("category_id", -1)), _float(d, "ap"), _float(d, "ap50"), _float(d, "precision"),
                   _float(d, "recall"), _float(d, "f1"), int(d.get("num_gt", 0)), _float(d, "score_threshold"),
                   {k: _float(d, k) for k in CLASS_SIZE_KEYS if k in d})


@dataclass(frozen=True)
class Metrics:
    """Every number a user reads of one model on one split (evaluate_detections): COCO's mAP (all, at 0.5
    and 0.75, and by_size: SIZE_KEYS), precision, recall, F1 and F_beta at the operating point, the score
    that ranks models and its threshold, per class rows, and where drawn, 95% bootstrap intervals
    (metric -> (low, high)) with how they were drawn. to_dict/from_dict are the form of every file."""

    map: float
    map_50: float
    map_75: float
    precision: float
    recall: float
    f1: float
    f_beta: float
    score: float
    threshold: float
    by_size: dict[str, float] = dataclasses.field(default_factory=dict)
    per_class: dict[str, ClassMetrics] = dataclasses.field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    bootstrap: str = ""

    def value(self, key: str) -> float:
        """A metric of METRIC_KEYS by name (a column of a table or log); NaN where it was not measured."""
        if key not in METRIC_KEYS and key != "f_beta":
            raise KeyError(f"{key!r} is not a metric ({', '.join(METRIC_KEYS)})")
        return float(getattr(self, key)) if key not in SIZE_KEYS else self.by_size.get(key, math.nan)

    def interval(self, key: str) -> tuple[float, float] | None:
        return self.intervals.get(key)

    def summary(self) -> dict[str, float]:
        """METRIC_KEYS as one flat row: metrics.csv, TensorBoard, the top-k index."""
        return {k: self.value(k) for k in METRIC_KEYS}

    def overall(self) -> "Metrics":
        """These metrics without the per-class rows (what an index of models keeps)."""
        return dataclasses.replace(self, per_class={})

    @property
    def num_gt(self) -> int:
        return sum(c.num_gt for c in self.per_class.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"map": self.map, "map_50": self.map_50, "map_75": self.map_75,
                               "precision": self.precision, "recall": self.recall, "f1": self.f1,
                               "f_beta": self.f_beta, "threshold": self.threshold, **self.by_size, "score": self.score}
        if self.per_class:
            out["per_class"] = {n: c.to_dict() for n, c in self.per_class.items()}
        if self.intervals:
            out.update(intervals={k: list(v) for k, v in self.intervals.items()}, bootstrap=self.bootstrap)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Metrics":
        """Metrics as a file holds them; keys older files lack read as NaN."""
        return cls(_float(d, "map"), _float(d, "map_50"), _float(d, "map_75"), _float(d, "precision"),
                   _float(d, "recall"), _float(d, "f1"), _float(d, "f_beta", _float(d, "f1")), _float(d, "score"),
                   _float(d, "threshold", _float(d, "score_threshold")),
                   {k: _float(d, k) for k in SIZE_KEYS if k in d},
                   {n: ClassMetrics.from_dict(c) for n, c in (d.get("per_class") or {}).items()},
                   {k: (float(v[0]), float(v[1])) for k, v in (d.get("intervals") or {}).items()},
                   str(d.get("bootstrap", "")))


def _float(d: Mapping[str, Any], key: str, default: float = math.nan) -> float:
    v = d.get(key)
    return default if v is None else float(v)


def composite_score(map_50: float, f_beta_value: float, score: ScoreConfig) -> float:
    """score = w_map * mAP@0.5 + w_f1 * F_beta (the module docstring has the whole formula)."""
    return score.w_map * map_50 + score.w_f1 * f_beta_value


def f_beta(precision: float, recall: float, beta: float = 1.0) -> float:
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall) if precision + recall else 0.0


@dataclass(frozen=True)
class ClassMap:
    """One category's COCO numbers: AP, AP at IoU 0.5, and AP/AR by size and AR@100 (CLASS_SIZE_KEYS)."""

    ap: float
    ap50: float
    by_size: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls) -> "ClassMap":
        return cls(0.0, 0.0)


@dataclass(frozen=True)
class CocoMap:
    """COCO's twelve bbox numbers (mAP, at .50 and .75, and by_size: SIZE_KEYS) and per category id."""

    map: float
    map_50: float
    map_75: float
    by_size: dict[str, float]
    per_class: dict[int, ClassMap]


def coco_map(gt: dict[str, Any], results: list[dict[str, Any]]) -> CocoMap:
    """COCO's twelve bbox numbers (COCO_KEYS: AP over IoU .50:.95, at .50 and .75, AP by size, AR at 1, 10 and
    100 detections and AR by size), overall and per category (ap, ap50, ap and ar_100 by size). A size no
    ground-truth box has is NaN (COCO's -1): nothing was there to find."""
    if not results or not gt.get("annotations"):
        return _nothing_found(gt)
    ev = _coco_eval(gt, results)
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        c = {f"ap_{size}": _mean_or_nan(precision[:, :, k, a, -1]) for a, size in enumerate(SIZES, start=1)}
        c["ar_100"] = _mean_valid(recall[:, k, 0, -1])
        c.update({f"ar_{size}": _mean_or_nan(recall[:, k, a, -1]) for a, size in enumerate(SIZES, start=1)})
        per_class[int(cid)] = ClassMap(_mean_valid(precision[:, :, k, 0, -1]), _mean_valid(precision[0, :, k, 0, -1]), c)
    stats = [float(v) for v in ev.stats[:12]]
    out = {key: _valid(v) if i < 3 else (v if v > -1 else math.nan) for i, (key, v) in enumerate(zip(COCO_KEYS, stats))}
    return CocoMap(out["map"], out["map_50"], out["map_75"], {k: out[k] for k in SIZE_KEYS}, per_class)


def _nothing_found(gt: dict[str, Any]) -> CocoMap:
    """coco_map without predictions (or ground truth): 0 wherever there were boxes to find, NaN elsewhere."""
    def areas(anns: list[dict]) -> list[float]:
        return [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns if not a.get("iscrowd", 0)]

    def by_size(anns: list[dict]) -> dict[str, float]:
        found = areas(anns)
        return {size: 0.0 if any(lo <= x < hi for x in found) else math.nan for size, (lo, hi) in SIZES.items()}

    anns = gt.get("annotations") or []
    sizes = by_size(anns)
    overall = {**{f"map_{s}": v for s, v in sizes.items()},
               **{k: 0.0 if anns else math.nan for k in ("mar_1", "mar_10", "mar_100")},
               **{f"mar_{s}": v for s, v in sizes.items()}}
    per_class = {}
    for c in gt.get("categories", []) if anns else []:
        s = by_size([a for a in anns if a["category_id"] == c["id"]])
        per_class[int(c["id"])] = ClassMap(0.0, 0.0, {**{f"ap_{k}": v for k, v in s.items()}, "ar_100": 0.0,
                                                      **{f"ar_{k}": v for k, v in s.items()}})
    return CocoMap(0.0, 0.0, 0.0, {k: overall[k] for k in SIZE_KEYS}, per_class)


def pr_curves(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per category id, COCO's interpolated (recall, precision) curve at IoU 0.5 (101 recall points)."""
    if not results or not gt.get("annotations"):
        return {}
    ev = _coco_eval(gt, results)
    recall = np.asarray(ev.params.recThrs)
    curves = {}
    for k, cid in enumerate(ev.params.catIds):
        p = ev.eval["precision"][0, :, k, 0, -1]
        if (p > -1).any():
            curves[int(cid)] = (recall, np.clip(p, 0, None))
    return curves


def _coco_eval(gt: dict[str, Any], results: list[dict[str, Any]]):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@dataclass(frozen=True)
class Matches:
    """Greedy one-to-one matching of predictions to ground truth, class-aware, highest score first, done once
    at score 0: since a prediction's match depends only on higher-scored ones, the matches above any
    threshold are the ones above it here. Per category id: the scores of matched (tp) and unmatched (fp)
    predictions, and the number of non-crowd ground-truth boxes."""

    tp_scores: dict[int, np.ndarray]
    fp_scores: dict[int, np.ndarray]
    num_gt: dict[int, int]

    def counts(self, thresholds: Thresholds) -> dict[int, tuple[int, int, int]]:
        """Per category (tp, fp, fn) at the thresholds."""
        out = {}
        for cid in self.num_gt.keys() | self.tp_scores.keys() | self.fp_scores.keys():
            t = thresholds.of(cid)
            tp = int((self.tp_scores.get(cid, _NONE) >= t).sum())
            fp = int((self.fp_scores.get(cid, _NONE) >= t).sum())
            out[cid] = (tp, fp, self.num_gt.get(cid, 0) - tp)
        return out

    def best_threshold(self, beta: float) -> float:
        """The one threshold for every class that maximises F_beta over all of them."""
        tp = np.concatenate([*self.tp_scores.values(), _NONE])
        fp = np.concatenate([*self.fp_scores.values(), _NONE])
        return best_threshold(tp, fp, sum(self.num_gt.values()), beta)[0]


_NONE = np.zeros(0, np.float64)


def best_threshold(tp_scores: np.ndarray, fp_scores: np.ndarray, num_gt: int, beta: float) -> tuple[float, float]:
    """(threshold, F_beta) maximising F_beta over thresholds at the distinct predicted scores; ties go to the
    higher threshold (fewer boxes). Without predictions: (1.0, 0.0)."""
    scores = np.concatenate([tp_scores, fp_scores])
    if not len(scores) or num_gt == 0:
        return 1.0, 0.0
    hit = np.concatenate([np.ones(len(tp_scores)), np.zeros(len(fp_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, hit = scores[order], hit[order]
    tp, kept = np.cumsum(hit), np.arange(1, len(scores) + 1)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every box of its score
    tp, kept, candidates = tp[last], kept[last], scores[last]
    precision, recall = tp / kept, tp / num_gt
    values = np.array([f_beta(p, r, beta) for p, r in zip(precision, recall)])
    i = int(np.flatnonzero(values == values.max())[0])  # candidates descend: the first is the highest
    return float(candidates[i]), float(values[i])


def match(gt: dict[str, Any], results: list[dict[str, Any]], iou_threshold: float) -> Matches:
    """A prediction that matches no free box but overlaps a crowd box by `iou_threshold` counts neither way;
    crowd boxes are never missed."""
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in gt.get("annotations", []):
        gts[(a["image_id"], a["category_id"])].append(a)
    preds: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in results:
        preds[(r["image_id"], r["category_id"])].append(r)
    tp: dict[int, list[float]] = defaultdict(list)
    fp: dict[int, list[float]] = defaultdict(list)
    num_gt: dict[int, int] = defaultdict(int)
    for key in gts.keys() | preds.keys():
        hits, misses, n_gt = _match_one(gts.get(key, []), preds.get(key, []), iou_threshold)
        tp[key[1]] += hits
        fp[key[1]] += misses
        num_gt[key[1]] += n_gt
    return Matches({c: np.asarray(v, np.float64) for c, v in tp.items()},
                   {c: np.asarray(v, np.float64) for c, v in fp.items()}, dict(num_gt))


def match_image(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_threshold: float,
                thresholds: Thresholds) -> Iterator[tuple[int, int, int, int]]:
    """(image id, tp, fp, fn) per image and category at the thresholds: `match`, image by image."""
    gts: dict[tuple[int, int], list] = defaultdict(list)
    for a in gt.get("annotations", []):
        gts[(a["image_id"], a["category_id"])].append(a)
    preds: dict[tuple[int, int], list] = defaultdict(list)
    for r in results:
        preds[(r["image_id"], r["category_id"])].append(r)
    for key in gts.keys() | preds.keys():
        t = thresholds.of(key[1])
        hits, misses, n_gt = _match_one(gts.get(key, []), preds.get(key, []), iou_threshold)
        tp = sum(s >= t for s in hits)
        yield key[0], tp, sum(s >= t for s in misses), n_gt - tp


def match_counts(gt: dict[str, Any], results: list[dict[str, Any]], *, score_threshold: float,
                 iou_threshold: float) -> dict[int, tuple[int, int, int]]:
    """Per category (tp, fp, fn) of the predictions scoring at least `score_threshold`."""
    return match(gt, results, iou_threshold).counts(Thresholds(score_threshold, {}))


def _match_one(gt_anns: list[dict], preds: list[dict], iou_threshold: float) -> tuple[list[float], list[float], int]:
    """(scores of matched predictions, scores of unmatched ones, non-crowd ground-truth boxes)."""
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in gt_anns], dtype=bool)
    n_gt = int((~crowd).sum())
    if not preds:
        return [], [], n_gt
    order = np.argsort([-p["score"] for p in preds], kind="stable")
    scores = [float(preds[i]["score"]) for i in order]
    if not gt_anns:
        return [], scores, 0
    pboxes = xywh_to_xyxy([preds[i]["bbox"] for i in order])
    gboxes = xywh_to_xyxy([a["bbox"] for a in gt_anns])
    iou = box_iou(pboxes, gboxes)
    taken = greedy_match(iou, ~crowd, iou_threshold)
    on_crowd = (iou[:, crowd] >= iou_threshold).any(1)
    hits = [s for s, j in zip(scores, taken) if j >= 0]
    misses = [s for s, j, c in zip(scores, taken, on_crowd) if j < 0 and not c]
    return hits, misses, n_gt


def greedy_match(iou: np.ndarray, allowed: np.ndarray, iou_threshold: float) -> np.ndarray:
    """COCO's matching: the predictions (rows of `iou`, highest score first) in turn take the free box
    (column) they overlap most at >= iou_threshold among those `allowed` (a (boxes,) or (predictions,
    boxes) mask: not crowd, of the prediction's class). Returns the box each took, -1 for none."""
    allowed = np.broadcast_to(allowed, iou.shape)
    free = np.ones(iou.shape[1], bool)
    taken = np.full(iou.shape[0], -1)
    for i, row in enumerate(iou):
        candidates = np.where(free & allowed[i] & (row >= iou_threshold))[0]
        if len(candidates):
            taken[i] = candidates[np.argmax(row[candidates])]
            free[taken[i]] = False
    return taken


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, f_beta(precision, recall)


def _mean_valid(values: np.ndarray) -> float:
    v = values[values > -1]
    return float(v.mean()) if v.size else 0.0


def _valid(x: float) -> float:
    return float(x) if x > -1 else 0.0


def _mean_or_nan(values: np.ndarray) -> float:
    v = values[values > -1]
    return float(v.mean()) if v.size else math.nan
