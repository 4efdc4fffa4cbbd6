"""Evaluate a checkpoint, or a COCO results file from any detector, against a COCO annotation file."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .checkpoint import restore_model
from .data.coco import CocoDetection, CocoIndex, collate, load_coco
from .data.summary import crowding_warning
from .data.transforms import build_eval_transforms
from .engine import predict, resolve_device, resolve_precision, to_coco_results
from .errors import DatasetError
from .metrics import evaluate_detections


def evaluate_checkpoint(
    checkpoint: str | Path,
    annotations: str | Path,
    images_dir: str | Path | None = None,
    *,
    score_threshold: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of `annotations` with the checkpoint and return all metrics."""
    dev = resolve_device(device)
    restored = restore_model(checkpoint, dev)
    cfg = restored.config
    index = load_coco(annotations, images_dir, label_map=restored.label_map, keep_empty=True,
                      drop_placeholder_categories=cfg.data.drop_placeholder_categories)
    loader = DataLoader(CocoDetection(index, build_eval_transforms(restored.image_size)), batch_size=batch_size,
                        collate_fn=collate)
    predictions = predict(restored.model, loader, device=dev, precision=resolve_precision(cfg.train.amp, dev),
                          progress=progress, desc="evaluate")
    results = to_coco_results(predictions, restored.label_map)
    threshold = cfg.eval.score_threshold if score_threshold is None else score_threshold
    metrics = _metrics(index, results, threshold, cfg.eval.iou_threshold, cfg.score.w_map, cfg.score.w_f1)
    warning = crowding_warning(index, cfg.model.max_detections)
    return {**metrics, "warnings": [warning]} if warning else metrics


def evaluate_results_file(
    results_path: str | Path,
    annotations: str | Path,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    w_map: float = 0.5,
    w_f1: float = 0.5,
) -> dict[str, Any]:
    """Metrics of a COCO results file ([{image_id, category_id, bbox: [x, y, w, h], score}])."""
    index = load_coco(annotations, check_images=False)
    results = read_results(results_path, index)
    return _metrics(index, results, score_threshold, iou_threshold, w_map, w_f1)


def read_results(path: str | Path, index: CocoIndex) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: results file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable JSON results file ({e})") from None
    if not isinstance(results, list):
        raise DatasetError(f"{path}: a COCO results file is a JSON list of detections")
    image_ids = {r.id for r in index.images}
    category_ids = set(index.label_map.category_ids)
    for i, r in enumerate(results):
        where = f"{path}: results[{i}]"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise DatasetError(f"{where}: needs image_id, category_id, bbox and score")
        if r["image_id"] not in image_ids:
            raise DatasetError(f"{where}.image_id: {r['image_id']} is not an image of {index.path}; "
                               "evaluate against the annotation file the predictions were made for")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(math.isfinite(v) for v in box)):
            raise DatasetError(f"{where}.bbox: {box!r} is not 4 finite numbers [x, y, width, height]")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise DatasetError(f"{where}.score: {r['score']!r} is not a finite number")
        if r["category_id"] not in category_ids:
            raise DatasetError(f"{where}.category_id: {r['category_id']!r} is not a category of {index.path} "
                               f"({', '.join(map(str, sorted(category_ids)))}); were the predictions made with "
                               "another label map? Map them to these ids")
    return results


def _metrics(index: CocoIndex, results, score_threshold, iou_threshold, w_map, w_f1) -> dict[str, Any]:
    metrics = evaluate_detections(index.to_coco(), results, score_threshold=score_threshold,
                                  iou_threshold=iou_threshold, w_map=w_map, w_f1=w_f1)
    metrics.update(images=len(index.images), predictions=len(results), score_threshold=score_threshold,
                   iou_threshold=iou_threshold)
    return metrics
