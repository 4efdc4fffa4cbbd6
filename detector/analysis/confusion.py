"""The confusion matrix at an operating point: which class each ground-truth box was detected as, with a
background row (predictions that match no box) and a background column (boxes nothing found).

Only predictions at or above their class's threshold count. Matching is done in two passes, so the diagonal
is exactly the true positives precision and recall count (metrics.match): first each class on its own
(highest score first, each box taken once, IoU >= the threshold), then the boxes and predictions left over
class-agnostically (highest IoU first): such a pair is a class confusion. What is still left is a missed
box (background column) or a false detection (background row). A prediction on a crowd box counts neither
way, as in COCO.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..boxes import box_iou, xywh_to_xyxy
from ..metrics import Thresholds, greedy_match

BACKGROUND = "background"


@dataclass(frozen=True)
class ConfusionMatrix:
    """counts[i, j]: boxes of class i (row; the last row: no box) predicted as class j (column; the last
    column: not found)."""

    names: tuple[str, ...]  # the classes, in category order; BACKGROUND is the last row and column
    category_ids: tuple[int, ...]
    counts: np.ndarray
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"classes": [*self.names, BACKGROUND], "category_ids": list(self.category_ids),
                "rows": "ground truth (last: no box, a false detection)",
                "columns": "prediction (last: nothing, a missed box)", "iou_threshold": self.iou_threshold,
                "counts": self.counts.astype(int).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConfusionMatrix":
        return cls(tuple(d["classes"][:-1]), tuple(d["category_ids"]), np.asarray(d["counts"], np.int64),
                   float(d["iou_threshold"]))

    def table(self) -> str:
        labels = [*self.names, BACKGROUND]
        width = max(len(n) for n in [*labels, "true \\ predicted"]) + 2
        head = "true \\ predicted".ljust(width) + "".join(n[:10].rjust(12) for n in labels)
        rows = [n.ljust(width) + "".join(str(int(v)).rjust(12) for v in row) for n, row in zip(labels, self.counts)]
        return "\n".join([head, *rows])


def confusion_matrix(gt: dict[str, Any], results: list[dict[str, Any]], thresholds: Thresholds,
                     iou_threshold: float = 0.5) -> ConfusionMatrix:
    """The matrix of `results` (COCO results) against `gt` (a COCO dict) at `thresholds`."""
    cats = [c["id"] for c in gt["categories"]]
    column = {cid: i for i, cid in enumerate(cats)}
    bg = len(cats)
    counts = np.zeros((bg + 1, bg + 1), np.int64)
    boxes: dict[int, list[dict]] = defaultdict(list)
    for a in gt.get("annotations", []):
        boxes[a["image_id"]].append(a)
    kept: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if r["score"] >= thresholds.of(r["category_id"]):
            kept[r["image_id"]].append(r)
    for image_id in boxes.keys() | kept.keys():
        for g, p in _pairs(boxes.get(image_id, []), kept.get(image_id, []), iou_threshold):
            counts[bg if g is None else column[g], bg if p is None else column[p]] += 1
    return ConfusionMatrix(tuple(c["name"] for c in gt["categories"]), tuple(cats), counts, iou_threshold)


def _pairs(anns: list[dict], preds: list[dict], iou_threshold: float) -> list[tuple[int | None, int | None]]:
    """(ground-truth category or None, predicted category or None) for every box and prediction of one image."""
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    preds = sorted(preds, key=lambda p: -p["score"])
    iou = box_iou(xywh_to_xyxy([p["bbox"] for p in preds]), xywh_to_xyxy([a["bbox"] for a in anns]))
    g_cat = np.array([a["category_id"] for a in anns])
    p_cat = np.array([p["category_id"] for p in preds])
    # pass 1: each class on its own, as precision and recall match
    taken = greedy_match(iou, ~crowd[None, :] & (p_cat[:, None] == g_cat[None, :]), iou_threshold)
    box_free, pred_free = ~crowd, taken < 0
    box_free[taken[taken >= 0]] = False
    pairs: list[tuple[int | None, int | None]] = [(int(g_cat[j]), int(p_cat[i])) for i, j in enumerate(taken) if j >= 0]
    left = iou * pred_free[:, None] * box_free[None, :]
    while left.size and left.max() >= iou_threshold:  # pass 2: what is left, across classes, best overlap first
        i, j = np.unravel_index(np.argmax(left), left.shape)
        pairs.append((int(g_cat[j]), int(p_cat[i])))
        box_free[j] = pred_free[i] = False
        left[i, :], left[:, j] = 0.0, 0.0
    on_crowd = (iou[:, crowd] >= iou_threshold).any(1) if crowd.any() else np.zeros(len(preds), bool)
    pairs += [(None, int(p_cat[i])) for i in np.where(pred_free & ~on_crowd)[0]]
    pairs += [(int(g_cat[j]), None) for j in np.where(box_free)[0]]
    return pairs
