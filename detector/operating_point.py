"""An ensemble's operating point, chosen from its members' stored predictions without running a model again:
the WBF settings (conf_type x iou_thr, then skip_box_thr, then member weights; other settings replace the
configured ones only when they score `tune.min_gain` more), each with its best thresholds (thresholds.py).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence


from .config import CONF_TYPES, Config, EnsembleConfig
from .data.coco import LabelMap
from .engine import coco_detections
from .ensemble import ImagePrediction, fuse_wbf
from .metrics import Thresholds, coco_map, match, metrics_from
from .thresholds import tune_thresholds

IOU_THRS = (0.4, 0.5, 0.55, 0.6, 0.7)
SKIP_BOX_THRS = (0.0, 0.02, 0.05, 0.1)


@dataclass
class OperatingPoint:
    thresholds: Thresholds
    ensemble: EnsembleConfig
    score: float  # at this point, on the predictions it was chosen from
    configured_score: float  # with the configured ensemble.* and eval.score_threshold
    metrics: dict[str, Any]
    evaluations: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.thresholds.to_dict(), "ensemble": dataclasses.asdict(self.ensemble), "score": self.score,
                "configured_score": self.configured_score, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 3)}


def tune(gt: dict[str, Any], images: Sequence[ImagePrediction], image_ids: Sequence[int], label_map: LabelMap,
         cfg: Config) -> OperatingPoint:
    """The operating point of an ensemble from its members' stored predictions (`images[i].members`) on the
    images `gt` holds; a prediction without members is taken as one model's."""
    started = time.perf_counter()
    members = max((len(p.members) for p in images), default=0)
    tried: list[EnsembleConfig] = []

    def evaluate(settings: EnsembleConfig) -> tuple[float, Thresholds, dict[str, Any], EnsembleConfig]:
        tried.append(settings)
        results = _fused_results(images, image_ids, label_map, settings)
        matched, coco = match(gt, results, cfg.eval.iou_threshold), coco_map(gt, results)
        if len(tried) == 1:  # the configured settings, as they are: what tuning is measured against
            configured.append(metrics_from(coco, matched, gt, cfg.score, Thresholds(cfg.eval.score_threshold, {})))
        if cfg.tune.threshold:
            thresholds, metrics = tune_thresholds(gt, matched, coco, cfg.score, cfg.tune.min_class_boxes)
        else:
            thresholds = Thresholds(cfg.eval.score_threshold, {})
            metrics = metrics_from(coco, matched, gt, cfg.score, thresholds)
        return metrics["score"], thresholds, metrics, settings

    configured: list[dict[str, Any]] = []
    base = best = evaluate(cfg.ensemble)
    if cfg.tune.wbf and members > 1:
        for stage in _wbf_stages(members):
            best = max([best, *(evaluate(s) for s in stage(best[3]))], key=lambda r: r[0])  # first of equals
        if best[0] < base[0] + cfg.tune.min_gain:
            best = base
    score, thresholds, metrics, settings = best
    return OperatingPoint(thresholds, settings, score, configured[0]["score"], metrics, len(tried),
                          time.perf_counter() - started)


def _wbf_stages(members: int):
    """Coordinate search: each stage maps the best settings so far to the candidates it tries."""
    def fusion(current: EnsembleConfig):
        return [dataclasses.replace(current, conf_type=c, iou_thr=i) for c in CONF_TYPES for i in IOU_THRS
                if (c, i) != (current.conf_type, current.iou_thr)]

    def skip(current: EnsembleConfig):
        return [dataclasses.replace(current, skip_box_thr=s) for s in SKIP_BOX_THRS if s != current.skip_box_thr]

    def weights(current: EnsembleConfig):
        options = [None] + [[2.0 if j == i else 1.0 for j in range(members)] for i in range(members)]
        return [dataclasses.replace(current, weights=w) for w in options if w != current.weights]

    return fusion, skip, weights


def _fused_results(images: Sequence[ImagePrediction], image_ids: Sequence[int], label_map: LabelMap,
                   settings: EnsembleConfig) -> list[dict[str, Any]]:
    results = []
    for p, image_id in zip(images, image_ids):
        parts = p.members or [p]
        if len(parts) == 1:
            boxes, scores, labels = parts[0].boxes, parts[0].scores, parts[0].labels
        else:
            boxes, scores, labels = fuse_wbf([m.boxes for m in parts], [m.scores for m in parts],
                                             [m.labels for m in parts], width=p.width, height=p.height,
                                             weights=settings.weights, iou_thr=settings.iou_thr,
                                             skip_box_thr=settings.skip_box_thr, conf_type=settings.conf_type)
        results += coco_detections(image_id, boxes, scores.tolist(), [label_map.category_id(int(v)) for v in labels])
    return results
