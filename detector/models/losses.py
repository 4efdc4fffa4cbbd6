"""The box classifier's loss: cross-entropy (torchvision's) or focal, with optional class weights.

Focal loss here is the softmax form: loss_i = w_i * (1 - p_i)^gamma * -log p_i over the true class's
probability p_i, with w_i = alpha for object classes, 1 - alpha for background, times the class weight,
normalised by the sum of w_i. The detector scores boxes with a softmax at inference (torchvision's
postprocess), so the loss trains the same distribution it is read with; gamma = 0 and alpha = 0.5 give
cross-entropy exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from ..config import ModelConfig
from ..errors import ConfigError


class BoxClassifierLoss(nn.Module):
    def __init__(self, kind: str = "ce", *, alpha: float = 0.5, gamma: float = 0.0,
                 class_weights: Sequence[float] | None = None):
        super().__init__()
        self.kind, self.alpha, self.gamma = kind, alpha, gamma
        weight = torch.tensor([1.0, *class_weights], dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)  # per fold: not part of the checkpoint

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return F.cross_entropy(logits, labels, weight=self.weight)
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
        w = torch.where(labels > 0, self.alpha, 1.0 - self.alpha)
        if self.weight is not None:
            w = w * self.weight[labels]
        focal = (1.0 - log_p.exp()).clamp(min=0.0) ** self.gamma
        return -(w * focal * log_p).sum() / w.sum().clamp(min=1e-12)


class WeightedLossRoIHeads(RoIHeads):
    """torchvision's RoIHeads whose training loss takes its classification part from `classifier_loss`;
    inference and the box regression loss are torchvision's own."""

    classifier_loss: BoxClassifierLoss

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        _, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        loss_classifier = self.classifier_loss(class_logits, torch.cat(labels, dim=0))
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


def use_classifier_loss(roi_heads: RoIHeads, loss: BoxClassifierLoss) -> None:
    """Give a built RoIHeads the loss (its parameters and state dict keys stay as they are)."""
    roi_heads.__class__ = WeightedLossRoIHeads
    roi_heads.classifier_loss = loss


def class_weights(cfg: ModelConfig, class_counts: Sequence[int] | None, num_classes: int) -> list[float] | None:
    """model.class_weights resolved: None, the given list, or `auto` = inverse box frequency of each class in
    the training part (mean 1; a class without boxes gets the largest weight)."""
    spec = cfg.class_weights
    if spec is None:
        return None
    if isinstance(spec, list):
        if len(spec) != num_classes:
            raise ConfigError(f"model.class_weights has {len(spec)} values for {num_classes} classes; give one per "
                              "class in label order (`detector check-data` lists them), or auto")
        return [float(w) for w in spec]
    counts = np.asarray(class_counts if class_counts is not None else [1] * num_classes, dtype=np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), np.nan)
    inverse = np.where(np.isnan(inverse), np.nanmax(inverse) if np.isfinite(inverse).any() else 1.0, inverse)
    return (inverse / inverse.mean()).tolist()


def classifier_loss(cfg: ModelConfig, class_counts: Sequence[int] | None, num_classes: int) -> BoxClassifierLoss:
    weights = class_weights(cfg, class_counts, num_classes)
    if cfg.box_loss == "focal":
        return BoxClassifierLoss("focal", alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, class_weights=weights)
    return BoxClassifierLoss("ce", class_weights=weights)
