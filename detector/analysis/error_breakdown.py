"""Where the errors come from, in the manner of TIDE (Bolya et al., 2020): every detection that is not a true
positive and every box nothing found gets one cause, and the mAP@0.5 each cause costs is measured by fixing
it and scoring again.

A detection that matches no box at IoU >= 0.5 of its class is, in this order:
  duplicate       IoU >= 0.5 with a box of its class that a better detection already took
  classification  IoU >= 0.5 with a box of another class
  localisation    IoU in [0.1, 0.5) with a box of its class
  both            IoU in [0.1, 0.5) with a box of another class only
  background      IoU < 0.1 with every box
A box no detection took is `missed` unless a classification or localisation error points at it (that
error, once fixed, finds it). Fixing: a classification error takes its box's class, a localisation error
its box's coordinates, duplicates, `both` and background errors are removed, missed boxes are removed from
the ground truth. `gain` is mAP@0.5 after one fix minus before. Counts are of the detections kept at the
operating point; the gains use every detection, as mAP does.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..boxes import box_iou, xywh_to_xyxy
from ..metrics import Thresholds, coco_map, greedy_match

FG, BG = 0.5, 0.1
DETECTION_CAUSES = ("classification", "localisation", "both", "duplicate", "background")
CAUSES = (*DETECTION_CAUSES, "missed")


@dataclass
class Breakdown:
    """Per cause: how many at the operating point, and the mAP@0.5 fixing all of them gains; per image its
    errors at the operating point (for the worst images)."""

    counts: dict[str, int]
    gains: dict[str, float]
    map_50: float
    per_image: dict[int, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"map_50": self.map_50, "counts": self.counts, "gains": self.gains,
                "per_image": {str(k): v for k, v in self.per_image.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Breakdown":
        return cls(dict(d["counts"]), dict(d["gains"]), float(d["map_50"]),
                   {int(k): dict(v) for k, v in d.get("per_image", {}).items()})

    def worst(self, n: int) -> list[int]:
        """The n images with the most errors at the operating point (ties: lower image id first)."""
        totals = {i: sum(c.values()) for i, c in self.per_image.items()}
        return [i for i in sorted(totals, key=lambda i: (-totals[i], i)) if totals[i] > 0][:n]


@dataclass
class _Cause:
    kind: str  # a DETECTION_CAUSE, or "tp"
    box: int | None = None  # index into the image's boxes it points at


def error_breakdown(gt: dict[str, Any], results: list[dict[str, Any]], thresholds: Thresholds) -> Breakdown:
    """The breakdown of `results` (COCO results) against `gt` (a COCO dict)."""
    boxes: dict[int, list[dict]] = defaultdict(list)
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0):
            boxes[a["image_id"]].append(a)
    preds: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        preds[r["image_id"]].append(r)
    causes: dict[int, tuple[list[dict], list[_Cause], list[bool]]] = {}
    for image_id in boxes.keys() | preds.keys():
        mine = sorted(preds.get(image_id, []), key=lambda p: -p["score"])
        found, missed = _causes(boxes.get(image_id, []), mine)
        causes[image_id] = (mine, found, missed)
    base = _map_50(gt, results)
    gains = {kind: _map_50(*_fixed(gt, boxes, causes, kind)) - base for kind in CAUSES}
    counts, per_image = _count(causes, thresholds)
    return Breakdown(counts, gains, base, per_image)


def _causes(anns: list[dict], preds: list[dict]) -> tuple[list[_Cause], list[bool]]:
    """Each detection's cause (score order) and, per box, whether it is missed."""
    iou = box_iou(xywh_to_xyxy([p["bbox"] for p in preds]), xywh_to_xyxy([a["bbox"] for a in anns]))
    same = np.array([[p["category_id"] == a["category_id"] for a in anns] for p in preds], bool).reshape(iou.shape)
    box_of = greedy_match(iou, same, FG)
    taken = np.zeros(len(anns), bool)
    taken[box_of[box_of >= 0]] = True
    out = [_Cause("tp", int(j)) if j >= 0 else _classify(iou[i], same[i]) for i, j in enumerate(box_of)]
    explained = {c.box for c in out if c.kind in ("classification", "localisation")}
    return out, [not taken[j] and j not in explained for j in range(len(anns))]


def _classify(iou: np.ndarray, same: np.ndarray) -> _Cause:
    def best(mask: np.ndarray) -> tuple[float, int | None]:
        if not mask.any():
            return 0.0, None
        j = int(np.argmax(np.where(mask, iou, -1.0)))
        return float(iou[j]), j

    same_iou, same_box = best(same)
    other_iou, other_box = best(~same)
    if same_iou >= FG:
        return _Cause("duplicate", same_box)
    if other_iou >= FG:
        return _Cause("classification", other_box)
    if same_iou >= BG:
        return _Cause("localisation", same_box)
    if other_iou >= BG:
        return _Cause("both", other_box)
    return _Cause("background")


def _fixed(gt: dict[str, Any], boxes: dict[int, list[dict]], causes, kind: str) -> tuple[dict, list[dict]]:
    """(ground truth, results) with every error of `kind` fixed."""
    fixed_gt, results = gt, []
    dropped: set[int] = set()
    for image_id, (preds, found, missed) in causes.items():
        anns = boxes.get(image_id, [])
        for p, c in zip(preds, found):
            if c.kind != kind:
                results.append(p)
            elif kind == "classification":
                results.append({**p, "category_id": anns[c.box]["category_id"]})
            elif kind == "localisation":
                results.append({**p, "bbox": list(anns[c.box]["bbox"])})
        if kind == "missed":
            dropped |= {id(a) for a, m in zip(anns, missed) if m}
    if dropped:
        fixed_gt = copy.copy(gt)
        fixed_gt["annotations"] = [a for a in gt["annotations"] if id(a) not in dropped]
    return fixed_gt, results


def _map_50(gt: dict[str, Any], results: list[dict[str, Any]]) -> float:
    return float(coco_map(gt, results).map_50)


def _count(causes, thresholds: Thresholds) -> tuple[dict[str, int], dict[int, dict[str, int]]]:
    """Errors of the detections kept at the operating point, and the boxes those leave unexplained."""
    counts = {kind: 0 for kind in CAUSES}
    per_image: dict[int, dict[str, int]] = {}
    for image_id, (preds, found, missed) in causes.items():
        kept = [p["score"] >= thresholds.of(p["category_id"]) for p in preds]
        mine = {kind: 0 for kind in CAUSES}
        for c, k in zip(found, kept):
            if k and c.kind != "tp":
                mine[c.kind] += 1
        hit = {c.box for c, k in zip(found, kept) if k and c.kind in ("tp", "classification", "localisation")}
        mine["missed"] = len(missed) - len(hit)
        per_image[image_id] = mine
        for kind, v in mine.items():
            counts[kind] += v
    return counts, per_image
