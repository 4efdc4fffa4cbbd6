"""build(cfg): a torchvision FasterRCNN from a model config, class count and (optionally) fitted anchors;
assemble(): the same from parts already built."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..config import PACKAGED, ModelConfig
from ..errors import ConfigError
from .anchors import AnchorFit, FittedAnchorGenerator, default_generator, fit_anchors
from .backbones import build_backbone, num_levels
from .losses import classifier_loss, use_classifier_loss
from .weights import fetch, is_detector_state, load_matching, read_state_dict


class PreResizedTransform(GeneralizedRCNNTransform):
    """Normalise and batch only: the data pipeline has already resized images to the model's input size."""

    def resize(self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None,
               ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:  # typing names: TorchScript reads them
        return image, target


def build(
    cfg: ModelConfig,
    *,
    num_classes: int,
    image_size: int,
    anchor_shapes: Sequence[Sequence[tuple[float, float]]] | None = None,
    box_shapes: np.ndarray | None = None,
    class_counts: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[FasterRCNN, AnchorFit | None]:
    """The model a config describes, for `num_classes` foreground classes (labels 1..num_classes, 0 =
    background), with its weights (cfg.pretrained: True, "packaged", a local file read once, or False).

    `anchor_shapes`: per FPN level, (w, h) anchors in input pixels; None keeps torchvision's default
    generator, or with `anchors: kmeans` fits them to `box_shapes` ((N, 2) training box w, h in input pixels)
    and returns the fit too. `class_counts` (training boxes per class) sets `class_weights: auto`.
    """
    if num_classes < 1:
        raise ConfigError("the dataset needs at least one category to train a detector")
    file_state = None
    if isinstance(cfg.pretrained, str) and cfg.pretrained and cfg.pretrained != PACKAGED:
        file_state = read_state_dict(cfg.pretrained)
    detector_state = file_state if file_state is not None and is_detector_state(file_state) else None
    body = build_backbone(cfg.backbone, pretrained=False if detector_state is not None else _backbone_pretrained(cfg),
                          state=None if detector_state is not None else file_state,
                          trainable_layers=cfg.trainable_layers, frozen_bn=cfg.frozen_bn,
                          fpn_channels=cfg.fpn_channels, fpn_norm=cfg.heads == "v2")
    fit = None
    if anchor_shapes is None and cfg.anchors != "default":
        if box_shapes is None or len(box_shapes) == 0:
            raise ConfigError(f"model.anchors={cfg.anchors} needs training boxes to fit; the training split has none")
        fit = fit_anchors(box_shapes, num_levels=num_levels(body), per_level=cfg.anchors_per_level, seed=seed)
        if cfg.anchors == "auto" and not fit.beats_default:
            fit = dataclasses.replace(fit, used=False)
        else:
            anchor_shapes = fit.shapes
    levels = num_levels(body)
    if anchor_shapes is not None and len(anchor_shapes) != levels:
        raise ConfigError(f"anchors have {len(anchor_shapes)} levels but backbone {cfg.backbone} has {levels}")
    generator = FittedAnchorGenerator(anchor_shapes) if anchor_shapes is not None else default_generator(levels)
    model = assemble(body, generator, cfg, num_classes=num_classes, image_size=image_size)
    if cfg.box_loss != "ce" or cfg.class_weights is not None:
        use_classifier_loss(model.roi_heads, classifier_loss(cfg, class_counts, num_classes))
    if detector_state is not None:
        load_matching(model, detector_state, str(cfg.pretrained))
    elif _uses_coco_detector(cfg):
        weights = (FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1 if cfg.heads == "v2"
                   else FasterRCNN_ResNet50_FPN_Weights.COCO_V1)
        state = fetch(lambda: weights.get_state_dict(progress=False), "fasterrcnn_resnet50_fpn (torchvision COCO)",
                      "~/.cache/torch/hub/checkpoints/")
        load_matching(model, state, weights.url)
    return model, fit


def assemble(body: nn.Module, generator: nn.Module, cfg: ModelConfig, *, num_classes: int,
             image_size: int) -> FasterRCNN:
    """A FasterRCNN from its parts: a backbone with `out_channels`, an anchor generator, and the heads
    cfg describes. `heads`: "v1" (torchvision's fasterrcnn_resnet50_fpn: MLP box head) or "v2"
    (fasterrcnn_resnet50_fpn_v2: 2-conv RPN head, 4-conv + FC box head; trains much better from scratch)."""
    per_location = generator.num_anchors_per_location()
    if len(set(per_location)) != 1:
        raise ConfigError("every FPN level needs the same number of anchors per location")
    channels, resolution, size = body.out_channels, 7, cfg.representation_size
    if cfg.heads == "v2":
        rpn_head = RPNHead(channels, per_location[0], conv_depth=2)
        box_head = FastRCNNConvFCHead((channels, resolution, resolution), [channels] * 4, [size],
                                      norm_layer=nn.BatchNorm2d)
    else:
        rpn_head = RPNHead(channels, per_location[0])
        box_head = TwoMLPHead(channels * resolution ** 2, size)
    model = FasterRCNN(
        body,
        rpn_anchor_generator=generator,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(size, num_classes + 1),
        box_score_thresh=0.0,
        box_detections_per_img=cfg.max_detections,
        rpn_pre_nms_top_n_train=cfg.rpn_proposals_train, rpn_post_nms_top_n_train=cfg.rpn_proposals_train,
        rpn_pre_nms_top_n_test=cfg.rpn_proposals_test, rpn_post_nms_top_n_test=cfg.rpn_proposals_test,
        box_batch_size_per_image=cfg.box_samples_per_image,
    )
    model.transform = PreResizedTransform(image_size, image_size, list(body.image_mean), list(body.image_std))
    return model


def normalization(model: FasterRCNN) -> dict[str, list[float]]:
    """The input normalisation (RGB in [0, 1]) the model applies: saved in every checkpoint."""
    return {"mean": [float(v) for v in model.transform.image_mean],
            "std": [float(v) for v in model.transform.image_std]}


def set_normalization(model: FasterRCNN, values: dict[str, Sequence[float]]) -> None:
    model.transform.image_mean = [float(v) for v in values["mean"]]
    model.transform.image_std = [float(v) for v in values["std"]]


def _uses_coco_detector(cfg: ModelConfig) -> bool:
    """Whether `pretrained: true` means torchvision's whole COCO Faster R-CNN (which covers the backbone)."""
    return (cfg.pretrained is True and cfg.backbone == "resnet50_fpn" and cfg.representation_size == 1024
            and cfg.fpn_channels == 256)


def _backbone_pretrained(cfg: ModelConfig) -> bool | str:
    """Backbone-only weights are not downloaded when the COCO detector weights will replace them."""
    return False if _uses_coco_detector(cfg) else cfg.pretrained
