"""Detection metrics on COCO dicts: COCO mAP (faster-coco-eval), F1 at a score threshold, the composite score.

Inputs are a COCO ground-truth dict (xywh pixels) and a COCO results list
([{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]). mAP uses every prediction;
precision/recall/F1 use only predictions scoring at least `score_threshold`.
"""
from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from typing import Any

import numpy as np

from .boxes import box_iou, xywh_to_xyxy

METRIC_KEYS = ("map", "map_50", "map_75", "precision", "recall", "f1", "score")


def evaluate_detections(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    w_map: float = 0.5,
    w_f1: float = 0.5,
) -> dict[str, Any]:
    """All metrics a user reads: map, map_50, map_75, precision, recall, f1, score and per_class."""
    coco = coco_map(gt, results)
    counts = match_counts(gt, results, score_threshold=score_threshold, iou_threshold=iou_threshold)
    total = _prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {}
    for cid, name in names.items():
        p, r, f = _prf(*counts.get(cid, (0, 0, 0)))
        per_class[name] = {"category_id": cid, **coco["per_class"].get(cid, {"ap": 0.0, "ap50": 0.0}),
                           "precision": p, "recall": r, "f1": f, "num_gt": counts.get(cid, (0, 0, 0))[0] +
                           counts.get(cid, (0, 0, 0))[2]}
    out = {"map": coco["map"], "map_50": coco["map_50"], "map_75": coco["map_75"],
           "precision": total[0], "recall": total[1], "f1": total[2]}
    out["score"] = composite_score(out["map_50"], out["f1"], w_map, w_f1)
    out["per_class"] = per_class
    return out


def composite_score(map_50: float, f1: float, w_map: float = 0.5, w_f1: float = 0.5) -> float:
    return w_map * map_50 + w_f1 * f1


def coco_map(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO bbox AP over IoU .50:.95, at .50 and .75 (area all, 100 detections), overall and per category."""
    empty = {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "per_class": {}}
    if not results or not gt.get("annotations"):
        return empty
    ev = _coco_eval(gt, results)
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    cat_ids = list(ev.params.catIds)
    per_class = {}
    for k, cid in enumerate(cat_ids):
        per_class[int(cid)] = {"ap": _mean_valid(precision[:, :, k, 0, -1]), "ap50": _mean_valid(precision[0, :, k, 0, -1])}
    return {"map": _valid(ev.stats[0]), "map_50": _valid(ev.stats[1]), "map_75": _valid(ev.stats[2]),
            "per_class": per_class}


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


def match_counts(
    gt: dict[str, Any], results: list[dict[str, Any]], *, score_threshold: float, iou_threshold: float
) -> dict[int, tuple[int, int, int]]:
    """Per category (tp, fp, fn) from greedy one-to-one matching, class-aware, highest score first.

    Predictions below `score_threshold` are ignored. A prediction that matches no free box but overlaps a
    crowd box by `iou_threshold` counts neither way; crowd boxes are never missed.
    """
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in gt.get("annotations", []):
        gts[(a["image_id"], a["category_id"])].append(a)
    preds: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in results:
        if r["score"] >= score_threshold:
            preds[(r["image_id"], r["category_id"])].append(r)
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in gts.keys() | preds.keys():
        tp, fp, fn = _match_one(gts.get(key, []), preds.get(key, []), iou_threshold)
        c = counts[key[1]]
        c[0] += tp
        c[1] += fp
        c[2] += fn
    return {cid: tuple(c) for cid, c in counts.items()}


def _match_one(gt_anns: list[dict], preds: list[dict], iou_threshold: float) -> tuple[int, int, int]:
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in gt_anns], dtype=bool)
    n_gt = int((~crowd).sum())
    if not preds:
        return 0, 0, n_gt
    order = np.argsort([-p["score"] for p in preds], kind="stable")
    pboxes = xywh_to_xyxy([preds[i]["bbox"] for i in order])
    if not gt_anns:
        return 0, len(preds), 0
    gboxes = xywh_to_xyxy([a["bbox"] for a in gt_anns])
    iou = box_iou(pboxes, gboxes)
    free = ~crowd
    tp = fp = 0
    for row in iou:
        candidates = np.where(free & (row >= iou_threshold))[0]
        if len(candidates):
            free[candidates[np.argmax(row[candidates])]] = False
            tp += 1
        elif not np.any(crowd & (row >= iou_threshold)):
            fp += 1
    return tp, fp, n_gt - tp


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _mean_valid(values: np.ndarray) -> float:
    v = values[values > -1]
    return float(v.mean()) if v.size else 0.0


def _valid(x: float) -> float:
    return float(x) if x > -1 else 0.0
