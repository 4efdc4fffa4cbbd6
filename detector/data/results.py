"""COCO results: a model's predictions as the records COCO evaluation reads (xywh pixels, the dataset's own
category ids, rounded as a results file stores them)."""
from __future__ import annotations

from typing import Any, Iterable

from ..boxes import xyxy_to_xywh
from .records import LabelMap


def to_coco_results(predictions: list[dict[str, Any]], label_map: LabelMap) -> list[dict[str, Any]]:
    """Model predictions -> COCO results (xywh pixels, the dataset's own category ids)."""
    return [r for p in predictions for r in coco_detections(
        p["image_id"], p["boxes"].numpy(), p["scores"].tolist(),
        [label_map.category_id(int(label)) for label in p["labels"].tolist()])]


def coco_detections(image_id: int, boxes: Any, scores: Iterable[float], category_ids: Iterable[int],
                    ) -> list[dict[str, Any]]:
    """One image's boxes (xyxy pixels) as COCO result records (xywh, rounded)."""
    return [{"image_id": image_id, "category_id": int(cid), "bbox": [round(v, 3) for v in box],
             "score": round(float(score), 5)}
            for box, score, cid in zip(xyxy_to_xywh(boxes).tolist(), scores, category_ids)]
