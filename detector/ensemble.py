"""Weighted Boxes Fusion of several detectors, and Ensemble: checkpoints that predict and fuse together.

Boxes are xyxy pixels everywhere here; they are normalised to [0, 1] only inside fuse_wbf, the one
place that talks to ensemble-boxes (which needs normalised boxes, equal-length lists and int labels,
calls exit() on a length mismatch and returns float labels).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import RestoredModel, restore_model
from .config import EnsembleConfig
from .data.coco import CocoDetection, CocoIndex, collate
from .data.transforms import build_eval_transforms
from .engine import predict, resolve_device, resolve_precision, to_coco_results
from .errors import ConfigError


def fuse_wbf(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    width: int,
    height: int,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse one image's detections from several models.

    Per model: boxes (N, 4) xyxy in pixels of a width x height image, scores (N,), labels (N,) ints.
    Returns fused boxes (M, 4) float32 pixels, scores (M,) float32 and labels (M,) int64, by score.
    """
    n = len(boxes)
    if not (n == len(scores) == len(labels)) or n == 0:
        raise ValueError(f"fuse_wbf needs one boxes, scores and labels array per model; got "
                         f"{len(boxes)}, {len(scores)} and {len(labels)}")
    if weights is not None and len(weights) != n:
        raise ConfigError(f"ensemble.weights has {len(weights)} values for {n} models; give one per model")
    scale = np.array([width, height, width, height], dtype=np.float64)
    norm_boxes, norm_scores, norm_labels = [], [], []
    for i, (b, s, l) in enumerate(zip(boxes, scores, labels)):
        b, s, l = _numpy(b, np.float64).reshape(-1, 4), _numpy(s, np.float64).reshape(-1), _numpy(l, np.int64).reshape(-1)
        if not len(b) == len(s) == len(l):
            raise ValueError(f"model {i}: {len(b)} boxes, {len(s)} scores and {len(l)} labels; they must match")
        b = np.clip(b / scale, 0.0, 1.0)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # zero-area boxes would only raise warnings
        norm_boxes.append(b[keep].tolist())
        norm_scores.append(s[keep].tolist())
        norm_labels.append(l[keep].tolist())
    if not any(norm_boxes):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    from ensemble_boxes import weighted_boxes_fusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused, fused_scores, fused_labels = weighted_boxes_fusion(
            norm_boxes, norm_scores, norm_labels, weights=None if weights is None else list(weights),
            iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type)
    fused = np.asarray(fused, np.float64).reshape(-1, 4) * scale
    return fused.astype(np.float32), np.asarray(fused_scores, np.float32), np.rint(fused_labels).astype(np.int64)


def _numpy(x: Any, dtype) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype) if isinstance(x, torch.Tensor) else np.asarray(x, dtype)


@dataclass
class IndexPredictions:
    """Predictions of each member and of the fused ensemble over a CocoIndex (engine.predict format)."""

    fused: list[dict[str, Any]]
    members: list[list[dict[str, Any]]]


class Ensemble:
    """Checkpoints of one label map whose predictions are fused with WBF (one checkpoint: no fusion)."""

    def __init__(self, members: list[RestoredModel], settings: EnsembleConfig | None = None,
                 device: torch.device | None = None):
        if not members:
            raise ConfigError("an ensemble needs at least one checkpoint")
        names = [m.label_map.to_dict() for m in members]
        if any(n != names[0] for n in names[1:]):
            raise ConfigError("the checkpoints were trained on different label maps; they cannot be fused")
        self.members = members
        self.settings = settings or EnsembleConfig()
        self.device = device or torch.device("cpu")
        if self.settings.weights is not None and len(self.settings.weights) != len(members):
            raise ConfigError(f"ensemble.weights has {len(self.settings.weights)} values for {len(members)} "
                              "models; give one per model or null")

    @property
    def label_map(self):
        return self.members[0].label_map

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], settings: EnsembleConfig | None = None,
                         device: str = "auto") -> "Ensemble":
        dev = resolve_device(device)
        return cls([restore_model(p, dev) for p in paths], settings, dev)

    def predict_index(self, index: CocoIndex, *, batch_size: int = 8, progress: bool = False) -> IndexPredictions:
        """Every member over every image of `index`, then the per-image fusion."""
        members = [self._member_predictions(m, index, batch_size, progress) for m in self.members]
        sizes = {r.id: (r.width, r.height) for r in index.images}
        fused = [self.fuse([preds[i] for preds in members], *sizes[members[0][i]["image_id"]])
                 for i in range(len(members[0]))]
        return IndexPredictions(fused, members)

    def fuse(self, per_model: list[dict[str, Any]], width: int, height: int) -> dict[str, Any]:
        """One image's member predictions -> the ensemble's (a single member is returned as it is)."""
        if len(per_model) == 1:
            return per_model[0]
        s = self.settings
        boxes, scores, labels = fuse_wbf([p["boxes"] for p in per_model], [p["scores"] for p in per_model],
                                         [p["labels"] for p in per_model], width=width, height=height,
                                         weights=s.weights, iou_thr=s.iou_thr, skip_box_thr=s.skip_box_thr,
                                         conf_type=s.conf_type)
        return {"image_id": per_model[0]["image_id"], "boxes": torch.from_numpy(boxes),
                "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}

    def to_coco_results(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return to_coco_results(predictions, self.label_map)

    def _member_predictions(self, member: RestoredModel, index: CocoIndex, batch_size: int, progress: bool):
        loader = DataLoader(CocoDetection(index, build_eval_transforms(member.image_size)), batch_size=batch_size,
                            collate_fn=collate)
        precision = resolve_precision(member.config.train.amp, self.device)
        return predict(member.model, loader, device=self.device, precision=precision, progress=progress,
                       desc="ensemble member")
