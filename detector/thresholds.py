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
from .metrics import CocoMap, Matches, Metrics, Thresholds, best_threshold, metrics_from


def tune_thresholds(gt: dict[str, Any], matched: Matches, coco: CocoMap, score: ScoreConfig,
                    min_class_boxes: int) -> tuple[Thresholds, Metrics]:
    """The global threshold (and per-class ones where they help) that maximise the score; with its metrics."""
    default = matched.best_threshold(score.beta)
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
        if metrics.score > best_metrics.score:
            best, best_metrics = candidate, metrics
    return best, best_metrics
