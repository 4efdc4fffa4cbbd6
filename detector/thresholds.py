"""Score thresholds chosen from predictions already made (a trial's ensemble on data.val, or a run's
out-of-fold predictions) to maximise the score (metrics.py):
- the threshold, over every distinct predicted score, in one pass over the matches;
- a threshold per class, for classes with at least `tune.min_class_boxes` boxes, kept only when the overall
  score rises with them (a tiny split would otherwise fit its noise).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .config import ScoreConfig
from .metrics import Matches, Thresholds, f_beta, metrics_from


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


def tune_thresholds(gt: dict[str, Any], matched: Matches, coco: dict[str, Any], score: ScoreConfig,
                    min_class_boxes: int) -> tuple[Thresholds, dict[str, Any]]:
    """The global threshold (and per-class ones where they help) that maximise the score; with its metrics."""
    tp = np.concatenate([*matched.tp_scores.values(), np.zeros(0)])
    fp = np.concatenate([*matched.fp_scores.values(), np.zeros(0)])
    default, _ = best_threshold(tp, fp, sum(matched.num_gt.values()), score.beta)
    best = Thresholds(default, {})
    best_metrics = metrics_from(coco, matched, gt, score, best)
    per_class = {}
    for cid, n in matched.num_gt.items():
        if n >= min_class_boxes:
            t, _ = best_threshold(matched.tp_scores.get(cid, np.zeros(0)), matched.fp_scores.get(cid, np.zeros(0)),
                                  n, score.beta)
            per_class[cid] = t
    if per_class:
        candidate = Thresholds(default, per_class)
        metrics = metrics_from(coco, matched, gt, score, candidate)
        if metrics["score"] > best_metrics["score"]:
            best, best_metrics = candidate, metrics
    return best, best_metrics
