"""Labels that are probably wrong, ranked from a k-fold run's out-of-fold predictions: each training image as
predicted by the fold model that never trained on it, so a model's agreement with a label is not memory.

Four kinds, each with a confidence in [0, 1] and a suggested fix (after cleanlab's object-detection label
issues: missing, spurious and swapped boxes, and badly placed ones):
  missing      a confident prediction about no box (covering none at IoU 0.5, and not the closest
               confident prediction of any box it touches): add it
  class        a box that a confident prediction of another class covers (IoU >= 0.5) better than any
               prediction of its own class: relabel it
  unconfirmed  a box no prediction of any class confirms (the best score of those covering it at IoU >= 0.5
               is under `low`): remove it, or check it. Its confidence is scaled down for boxes smaller than
               their class's median (cut at the border, or small: hard rather than wrong)
  loose        a box whose confident own-class prediction overlaps it only loosely (IoU in [0.1, `tight`),
               no other box more): use the prediction's box
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import config as config_mod
from ..boxes import box_iou, xywh_to_xyxy
from ..training.cv import out_of_fold_results
from ..data.coco import CocoIndex
from ..data.splits import load_splits
from ..errors import DetectorError
from ..files import read_json
from .audit_files import AuditFiles, write_audit
from ..layout import RunPaths
from ..runs import hold_run

KINDS = ("missing", "class", "unconfirmed", "loose")
LOOSE_OVERLAP = 0.1  # a confident own-class prediction overlapping a box this much, and no other box more, is
# about that box


@dataclass(frozen=True)
class AuditSettings:
    confident: float = 0.5  # a prediction this sure is evidence
    low: float = 0.1  # a box whose best prediction scores under this is unconfirmed
    tight: float = 0.5  # a confident own-class prediction overlapping less than this is loose (as a metric
    #                     would count it: a localisation error)


@dataclass(frozen=True)
class LabelIssue:
    image_id: int
    file_name: str
    kind: str
    confidence: float
    bbox: list[float]  # xywh pixels: the box as labelled (missing: as predicted)
    category_id: int
    annotation_id: int | None  # the annotation it concerns, as in the user's file (None for missing)
    suggestion: dict[str, Any] = field(default_factory=dict)  # bbox and/or category_id to set, or remove

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit(index: CocoIndex, results: list[dict[str, Any]], settings: AuditSettings = AuditSettings()
          ) -> list[LabelIssue]:
    """Suspected label issues of `index` (a split's images) from `results` (COCO results on them), most
    confident first."""
    preds: dict[int, list[dict]] = {}
    for r in results:
        preds.setdefault(r["image_id"], []).append(r)
    issues: list[LabelIssue] = []
    areas: dict[int, list[float]] = {}
    for rec in index.images:
        for a in rec.annotations:
            areas.setdefault(a["category_id"], []).append(a["bbox"][2] * a["bbox"][3])
    typical = {c: float(np.median(v)) for c, v in areas.items()}
    for rec in index.images:
        anns = [a for a in rec.annotations if not a.get("iscrowd", 0)]
        issues += _image_issues(rec.id, rec.file_name, anns, preds.get(rec.id, []), typical, settings)
    return sorted(issues, key=lambda i: (-i.confidence, i.image_id))


def _image_issues(image_id: int, file_name: str, anns: list[dict], preds: list[dict], typical: dict[int, float],
                  s: AuditSettings) -> list[LabelIssue]:
    iou = box_iou(xywh_to_xyxy([p["bbox"] for p in preds]), xywh_to_xyxy([a["bbox"] for a in anns]))
    scores = np.array([p["score"] for p in preds], np.float64)
    out = [LabelIssue(image_id, file_name, "missing", float(p["score"]), list(p["bbox"]), p["category_id"], None,
                      {"add": {"bbox": list(p["bbox"]), "category_id": p["category_id"]}})
           for i, p in enumerate(preds) if p["score"] >= s.confident and not _about_a_box(i, iou, scores, s)]
    best_box = iou.argmax(1) if iou.size else np.zeros(len(preds), int)
    for j, a in enumerate(anns):
        issue = _box_issue(a, preds, iou[:, j], scores, best_box == j, typical.get(a["category_id"], 0.0), s)
        if issue is not None:
            kind, confidence, suggestion = issue
            out.append(LabelIssue(image_id, file_name, kind, confidence, list(a["bbox"]), a["category_id"],
                                  a.get("id"), suggestion))
    return out


def _about_a_box(i: int, iou: np.ndarray, scores: np.ndarray, s: AuditSettings) -> bool:
    """Whether prediction i is about a labelled box: it covers one (IoU >= 0.5), or it is the confident
    prediction that overlaps some box most (IoU >= 0.1). A prediction that only touches boxes other
    predictions already cover is about none: an object nobody labelled."""
    if iou.shape[1] == 0:
        return False
    if iou[i].max() >= 0.5:
        return True
    confident = np.where(scores >= s.confident, iou.T, -1.0)  # (boxes, predictions)
    closest = confident.argmax(1)
    return bool(any(closest[j] == i and iou[i, j] >= 0.1 for j in range(iou.shape[1])))


def _box_issue(a: dict, preds: list[dict], iou: np.ndarray, scores: np.ndarray, mine: np.ndarray, typical: float,
               s: AuditSettings):
    """(kind, confidence, suggestion) for one labelled box, or None when the predictions agree with it."""
    same = np.array([p["category_id"] == a["category_id"] for p in preds], bool)
    covering = iou >= 0.5
    own = float(scores[covering & same].max()) if (covering & same).any() else 0.0
    other = np.where(covering & ~same)[0]
    if len(other):
        k = other[np.argmax(scores[other])]
        if scores[k] >= s.confident and scores[k] > own:
            return "class", float(scores[k] - own), {"category_id": preds[k]["category_id"]}
    confident = np.where(same & mine & (scores >= s.confident) & (iou >= LOOSE_OVERLAP))[0]
    if len(confident):
        k = confident[np.argmax(iou[confident])]
        if iou[k] < s.tight:
            return "loose", float(scores[k] * (1.0 - iou[k])), {"bbox": [round(v, 2) for v in preds[k]["bbox"]]}
        return None
    best = float(scores[covering].max()) if covering.any() else 0.0
    if best < s.low:
        size = min(1.0, a["bbox"][2] * a["bbox"][3] / typical) if typical > 0 else 1.0
        return "unconfirmed", (1.0 - best) * size, {"remove": True}
    return None


def apply_fixes(raw: dict[str, Any], issues: list[LabelIssue]) -> dict[str, Any]:
    """A copy of the user's COCO file with every suggestion applied, for them to review: boxes added (new
    ids after the largest), relabelled, moved or removed."""
    fixed = copy.deepcopy(raw)
    by_id = {a["id"]: a for a in fixed.get("annotations", [])}
    removed: set[Any] = set()
    next_id = max((a["id"] for a in by_id.values() if isinstance(a["id"], int)), default=0) + 1
    for issue in issues:
        s = issue.suggestion
        if "add" in s:
            x, y, w, h = s["add"]["bbox"]
            fixed["annotations"].append({"id": next_id, "image_id": issue.image_id, "category_id": s["add"]["category_id"],
                                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            next_id += 1
        elif issue.annotation_id in by_id:
            a = by_id[issue.annotation_id]
            if s.get("remove"):
                removed.add(issue.annotation_id)
            a.update({k: v for k, v in s.items() if k in ("category_id", "bbox")})
            if "bbox" in s:
                a["area"] = s["bbox"][2] * s["bbox"][3]
    fixed["annotations"] = [a for a in fixed["annotations"] if a.get("id") not in removed]
    return fixed


def audit_into(run: str | Path, out: str | Path | None = None, settings: AuditSettings = AuditSettings(), *,
               top: int = 20, force: bool = False) -> tuple[CocoIndex, list[LabelIssue], AuditFiles]:
    """Audit a finished k-fold run and write the issues, the fixed training file and the first `top` drawings
    into `out` (default: the run folder, locked against a `detector cv` running there meanwhile)."""
    folder = Path(out) if out is not None else Path(run)
    with contextlib.ExitStack() as stack:
        if out is None and os.access(run, os.W_OK):  # a read-only run has no writer to wait for
            stack.enter_context(hold_run(run))
        index, issues = audit_run(run, settings)
        written = write_audit(folder, [i.to_dict() for i in issues], apply_fixes(read_json(index.path), issues),
                              lambda drawings: draw_issues(index, issues, drawings, top), force=force)
    return index, issues, written


def audit_run(run: str | Path, settings: AuditSettings = AuditSettings()) -> tuple[CocoIndex, list[LabelIssue]]:
    """The training split of a finished k-fold run (a cv run or a study trial) and its suspected issues."""
    paths = RunPaths(run)
    if not (paths.folds.exists() and paths.config.exists()):
        raise DetectorError(f"{paths.root}: not a k-fold run (no {paths.folds.name}); audit-labels reads the "
                            "out-of-fold predictions of `detector cv` or of a study trial (studies/NAME/trial_NNNN)")
    found = out_of_fold_results(paths, read_json(paths.folds)["folds"])
    if found is None:
        raise DetectorError(f"{paths.root}: not every fold has finished; run the same `detector cv` command again "
                            "to finish it, then audit")
    results, ids = found
    index = load_splits(config_mod.load(paths.config))[0]
    return index.subset(ids), audit(index.subset(ids), results, settings)


def draw_issues(index: CocoIndex, issues: list[LabelIssue], folder: Path, n: int = 20) -> list[Path]:
    """FOLDER/RANK_KIND_NAME.png for the first `n` issues: the box as labelled in white, the suggestion in
    yellow, the kind and confidence above."""
    from PIL import Image, ImageDraw

    from ..data.images import read_image

    records = {r.id: r for r in index.images}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, issue in enumerate(issues[:n]):
        rec = records[issue.image_id]
        image = Image.fromarray(read_image(rec.path))
        canvas = ImageDraw.Draw(image)
        width = max(1, round(max(rec.width, rec.height) / 400))
        x, y, w, h = issue.bbox
        canvas.rectangle([x, y, x + w, y + h], outline="white", width=width)
        if "bbox" in issue.suggestion:
            sx, sy, sw, sh = issue.suggestion["bbox"]
            canvas.rectangle([sx, sy, sx + sw, sy + sh], outline="yellow", width=width)
        name = index.label_map.names[index.label_map.category_ids.index(issue.category_id)]
        canvas.text((x + 2, max(y - 11, 0)), f"{issue.kind} {issue.confidence:.2f} ({name})", fill="yellow")
        path = folder / f"{rank:03d}_{issue.kind}_{Path(rec.file_name).stem}.png"
        image.save(path)
        paths.append(path)
    return paths
