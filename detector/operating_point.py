"""An ensemble's operating point, chosen from its members' stored predictions without running a model again:
the WBF settings (conf_type x iou_thr, then skip_box_thr, then member weights: equal, by each member's mAP on
these images, or one member doubled), each with its best thresholds (thresholds.py).

A setting replaces the best so far only when it raises the score without lowering mAP@[.5:.95], or raises
mAP without lowering the score: the score (mAP@0.5 and F1) cannot see how tight the fused boxes are, and a
loose fusion that merges a weak member's boxes into a strong one's raises it while the boxes get worse. The
search's result replaces the configured settings only when it scores `tune.min_gain` more.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence


from .config import CONF_TYPES, Config, EnsembleConfig
from .data.results import coco_detections
from .inference.ensemble import ImagePrediction, fuse_wbf
from .metrics import Metrics, OperatingPoint, Thresholds, coco_map, match, metrics_from
from .thresholds import tune_thresholds

IOU_THRS = (0.4, 0.5, 0.55, 0.6, 0.7)
SKIP_BOX_THRS = (0.0, 0.02, 0.05, 0.1)


@dataclass(frozen=True)
class Candidate:
    """One WBF setting tried, with its best thresholds and their metrics."""

    settings: EnsembleConfig
    thresholds: Thresholds
    metrics: Metrics
    configured_score: float  # the same fused boxes at eval.score_threshold

    @property
    def score(self) -> float:
        return self.metrics.score


def tune(gt: dict[str, Any], images: Sequence[ImagePrediction], image_ids: Sequence[int], cfg: Config,
         source: str = "", member_maps: Sequence[float] | None = None) -> OperatingPoint:
    """The operating point of an ensemble from its members' stored predictions (`images[i].members`) on the
    images `gt` holds; a prediction without members is taken as one model's. `source` says which
    predictions these are; `member_maps`, each member's mAP on them, adds weights by it to the search."""
    started = time.perf_counter()
    members = max((len(p.members) for p in images), default=0)
    tried: list[Candidate] = []

    def evaluate(settings: EnsembleConfig) -> Candidate:
        tried.append(_candidate(gt, fused_results(images, image_ids, settings), settings, cfg))
        return tried[-1]

    base = best = evaluate(cfg.ensemble)  # the configured settings: what tuning is measured against
    if cfg.tune.wbf and members > 1:
        for stage in _wbf_stages(members, member_maps):
            for candidate in map(evaluate, stage(best.settings)):
                best = candidate if improves(candidate.metrics, best.metrics) else best
        if best.score < base.score + cfg.tune.min_gain:
            best = base
    return OperatingPoint(best.thresholds, best.settings, best.score, base.configured_score, best.metrics,
                          len(image_ids), source, len(tried), time.perf_counter() - started)


def improves(new: Metrics, old: Metrics) -> bool:
    """Whether metrics `new` are better than `old` on one count (score, or mAP@[.5:.95]) and no worse on the
    other."""
    return (new.score >= old.score and new.map >= old.map
            and (new.score > old.score or new.map > old.map))


def _candidate(gt: dict[str, Any], results: list[dict[str, Any]], settings: EnsembleConfig, cfg: Config) -> Candidate:
    matched, coco = match(gt, results, cfg.eval.iou_threshold), coco_map(gt, results)
    configured = Thresholds(cfg.eval.score_threshold, {})
    at_configured = metrics_from(coco, matched, gt, cfg.score, configured)
    if cfg.tune.threshold:
        thresholds, metrics = tune_thresholds(gt, matched, coco, cfg.score, cfg.tune.min_class_boxes)
    else:
        thresholds, metrics = configured, at_configured
    return Candidate(settings, thresholds, metrics, at_configured.score)


def _wbf_stages(members: int, member_maps: Sequence[float] | None):
    """Coordinate search: each stage maps the best settings so far to the candidates it tries."""
    def fusion(current: EnsembleConfig):
        return [dataclasses.replace(current, conf_type=c, iou_thr=i) for c in CONF_TYPES for i in IOU_THRS
                if (c, i) != (current.conf_type, current.iou_thr)]

    def skip(current: EnsembleConfig):
        return [dataclasses.replace(current, skip_box_thr=s) for s in SKIP_BOX_THRS if s != current.skip_box_thr]

    def weights(current: EnsembleConfig):
        options = [None] + _by_map(member_maps, members) + [[2.0 if j == i else 1.0 for j in range(members)]
                                                            for i in range(members)]
        return [dataclasses.replace(current, weights=w) for w in options if w != current.weights]

    return fusion, skip, weights


def _by_map(member_maps: Sequence[float] | None, members: int) -> list[list[float]]:
    """Weights proportional to each member's mAP, and to its square (the best member 1.0), when known."""
    if member_maps is None or len(member_maps) != members or max(member_maps) <= 0:
        return []
    top = max(member_maps)
    return [[round(max(m, 0.0) / top, 4) for m in member_maps], [round((max(m, 0.0) / top) ** 2, 4)
                                                                 for m in member_maps]]


def fused_results(images: Sequence[ImagePrediction], image_ids: Sequence[int], settings: EnsembleConfig,
                  members: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO results of the members' stored predictions fused with `settings` (one member: its own boxes);
    `members` picks which of them are fused (default: all)."""
    results = []
    for p, image_id in zip(images, image_ids):
        f = fused_image(p, settings, members)
        results += coco_detections(image_id, f.boxes, f.scores.tolist(), f.category_ids)
    return results


def only(images: Sequence[ImagePrediction], members: Sequence[int] | None) -> list[ImagePrediction]:
    """The stored predictions with only `members` among their members (None: all)."""
    if members is None:
        return list(images)
    return [dataclasses.replace(p, members=[p.members[i] for i in members]) if p.members else p for p in images]


def fused_image(p: ImagePrediction, settings: EnsembleConfig,
                members: Sequence[int] | None = None) -> ImagePrediction:
    """One image's stored member predictions fused with `settings` (one member: its own boxes); `members`
    picks which of them are fused (default: all)."""
    parts = [p.members[i] for i in members] if members is not None and p.members else (p.members or [p])
    if len(parts) == 1:
        return dataclasses.replace(parts[0], members=[])
    boxes, scores, labels = fuse_wbf([m.boxes for m in parts], [m.scores for m in parts], [m.labels for m in parts],
                                     width=p.width, height=p.height, weights=settings.weights,
                                     iou_thr=settings.iou_thr, skip_box_thr=settings.skip_box_thr,
                                     conf_type=settings.conf_type)
    named = {int(label): (name, cid) for m in parts for label, name, cid in zip(m.labels, m.names, m.category_ids)}
    return ImagePrediction(p.source, p.width, p.height, boxes, scores, labels,
                           [named[int(v)][0] for v in labels], [named[int(v)][1] for v in labels])


