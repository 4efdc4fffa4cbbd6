"""One model (or ensemble, or results file) scored on one annotated split, as every command that has ground
truth reports it: its Metrics with bootstrap intervals at an operating point, its confusion matrix and
error breakdown there, and on how many images and predictions. `score` builds it; evaluate, predict --gt,
a study's held-out and test reports all use it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import ScoreConfig
from ..intervals import Bootstrap, Difference, ImageParts, intervals
from ..metrics import Metrics, Thresholds, evaluate_detections
from .confusion import ConfusionMatrix, confusion_matrix
from .error_breakdown import Breakdown, error_breakdown


@dataclass(frozen=True)
class Scorecard:
    """What a model scored on a split; to_dict is the form of evaluate's JSON, heldout.json's and test.json's
    rows (the metrics' keys at the top level, beside these)."""

    metrics: Metrics
    images: int
    thresholds: Thresholds
    iou_threshold: float = 0.5
    predictions: int | None = None
    confusion: ConfusionMatrix | None = None
    errors: Breakdown | None = None
    annotations: str = ""
    warnings: tuple[str, ...] = ()
    versus_members: tuple[dict[str, Difference], ...] = ()  # an ensemble minus each member, paired

    def to_dict(self) -> dict[str, Any]:
        out = {**self.metrics.to_dict(), "images": self.images, "score_threshold": self.thresholds.default,
               "iou_threshold": self.iou_threshold}
        optional = {"predictions": self.predictions, "annotations": self.annotations or None,
                    "class_thresholds": self.thresholds.to_dict()["class_thresholds"] or None,
                    "confusion": self.confusion.to_dict() if self.confusion else None,
                    "errors": self.errors.to_dict() if self.errors else None,
                    "warnings": list(self.warnings) or None,
                    "versus_members": [{k: d.to_dict() for k, d in v.items()} for v in self.versus_members] or None}
        return {**out, **{k: v for k, v in optional.items() if v is not None}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scorecard":
        thresholds = Thresholds.from_dict(d) or Thresholds(float(d.get("threshold", 0.5)), {})
        return cls(Metrics.from_dict(d), int(d.get("images", 0)), thresholds, float(d.get("iou_threshold", 0.5)),
                   d.get("predictions"), ConfusionMatrix.from_dict(d["confusion"]) if d.get("confusion") else None,
                   Breakdown.from_dict(d["errors"]) if d.get("errors") else None, str(d.get("annotations") or ""),
                   tuple(d.get("warnings") or ()),
                   tuple({k: Difference.from_dict(x) for k, x in v.items()} for v in d.get("versus_members") or ()))

    def with_(self, **changes: Any) -> "Scorecard":
        return dataclasses.replace(self, **changes)


def score(gt: dict[str, Any], results: Sequence[dict[str, Any]], thresholds: Thresholds, *, iou_threshold: float,
          score: ScoreConfig, bootstrap: Bootstrap, errors: bool = True, metrics: Metrics | None = None,
          ) -> tuple[Scorecard, ImageParts | None]:
    """`results` scored against `gt` (COCO dicts) at `thresholds`: metrics (given, or computed), intervals
    from `bootstrap` (none at 0 resamples), and with `errors` the confusion matrix and error breakdown; with
    the per-image parts where intervals were drawn, for paired comparisons (intervals.compare)."""
    results = list(results)
    if metrics is None:
        metrics = evaluate_detections(gt, results, score_threshold=thresholds.default,
                                      class_thresholds=thresholds.per_class, iou_threshold=iou_threshold, score=score)
    parts = ImageParts.of(gt, results, thresholds, iou_threshold, score) if bootstrap.resamples else None
    found = intervals(parts, bootstrap) if parts else {}
    if found:
        metrics = dataclasses.replace(metrics, intervals={k: (v.low, v.high) for k, v in found.items()},
                                      bootstrap=bootstrap.describe(parts.images))
    card = Scorecard(metrics, len(gt["images"]), thresholds, iou_threshold, len(results),
                     confusion_matrix(gt, results, thresholds, iou_threshold) if errors else None,
                     error_breakdown(gt, results, thresholds) if errors else None)
    return card, parts
