"""fit()'s validation of an epoch: predict the validation images (each rank its shard under torchrun),
gather the results, and score them at the split's best threshold, as selection does."""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from . import distributed
from .config import Config
from .data.records import LabelMap
from .engine import predict, to_coco_results
from .metrics import evaluate_detections


def validate(model: nn.Module, loader: Iterable, gt: dict[str, Any], label_map: LabelMap, cfg: Config,
             process: distributed.Process, progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, COCO results) of `model` on the images of `gt`; every rank gets the whole split's."""
    predictions = predict(model, loader, device=process.device, precision=process.precision, progress=progress,
                          desc="validate")
    results = to_coco_results(predictions, label_map)
    w = process.world
    if w.active:  # each rank predicted its shard of the validation images
        results = sorted((r for part in distributed.gather(w, results) for r in part), key=lambda r: r["image_id"])
    metrics = evaluate_detections(gt, results, score_threshold=None, iou_threshold=cfg.eval.iou_threshold,
                                  score=cfg.score)
    return metrics, results
