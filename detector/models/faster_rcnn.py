"""build_model: a torchvision FasterRCNN from a backbone name, class count and (optionally) fitted anchors."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, FasterRCNN_ResNet50_FPN_Weights, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..config import ModelConfig
from ..errors import ConfigError
from .anchors import FittedAnchorGenerator, default_generator
from .backbones import build_backbone, num_levels
from .weights import fetch, is_detector_state, load_matching, read_state_dict


class PreResizedTransform(GeneralizedRCNNTransform):
    """Normalise and batch only: the data pipeline has already resized images to the model's input size."""

    def resize(self, image: torch.Tensor, target: dict | None = None):
        return image, target


def build_model(
    *,
    backbone: str,
    num_classes: int,
    image_size: int,
    anchor_shapes: Sequence[Sequence[tuple[float, float]]] | None = None,
    anchors_per_level: int = 3,
    pretrained: bool | str = False,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    max_detections: int = 100,
) -> FasterRCNN:
    """A FasterRCNN for `num_classes` foreground classes (labels 1..num_classes, 0 = background).

    `anchor_shapes`: per FPN level, (w, h) anchors in input pixels (from `fit_anchors`); None keeps
    torchvision's default generator. `pretrained`: True, a local weight file, or False.
    """
    if num_classes < 1:
        raise ConfigError("the dataset needs at least one category to train a detector")
    body = build_backbone(backbone, pretrained=pretrained, trainable_layers=trainable_layers,
                          frozen_bn=frozen_bn, fpn_channels=fpn_channels)
    levels = num_levels(body)
    if anchor_shapes is not None and len(anchor_shapes) != levels:
        raise ConfigError(f"anchors have {len(anchor_shapes)} levels but backbone {backbone} has {levels}")
    generator = FittedAnchorGenerator(anchor_shapes) if anchor_shapes is not None else default_generator(levels)
    per_location = generator.num_anchors_per_location()
    if len(set(per_location)) != 1:
        raise ConfigError("every FPN level needs the same number of anchors per location")
    resolution = 7
    model = FasterRCNN(
        body,
        rpn_anchor_generator=generator,
        rpn_head=RPNHead(body.out_channels, per_location[0]),
        box_head=TwoMLPHead(body.out_channels * resolution ** 2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        box_score_thresh=0.0,
        box_detections_per_img=max_detections,
    )
    model.transform = PreResizedTransform(image_size, image_size, model.transform.image_mean,
                                          model.transform.image_std)
    _load_detector_weights(model, backbone, pretrained, representation_size)
    return model


def build(cfg: ModelConfig, *, num_classes: int, image_size: int,
          anchor_shapes: Sequence[Sequence[tuple[float, float]]] | None = None) -> FasterRCNN:
    return build_model(
        backbone=cfg.backbone, num_classes=num_classes, image_size=image_size, anchor_shapes=anchor_shapes,
        anchors_per_level=cfg.anchors_per_level, pretrained=cfg.pretrained,
        trainable_layers=cfg.trainable_layers, frozen_bn=cfg.frozen_bn, fpn_channels=cfg.fpn_channels,
        representation_size=cfg.representation_size, max_detections=cfg.max_detections,
    )


def _load_detector_weights(model: nn.Module, backbone: str, pretrained: bool | str, representation_size: int) -> None:
    """Whole-detector weights: torchvision's COCO Faster R-CNN for resnet50_fpn, or a detector file.

    Tensors whose shape differs (class predictor, an RPN head with fitted anchors) keep their init.
    """
    if isinstance(pretrained, str) and pretrained:
        state = read_state_dict(pretrained)
        if is_detector_state(state):
            load_matching(model, state, pretrained)
    elif pretrained is True and backbone == "resnet50_fpn" and representation_size == 1024:
        weights = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
        state = fetch(lambda: weights.get_state_dict(progress=False), "fasterrcnn_resnet50_fpn (torchvision COCO)",
                      "~/.cache/torch/hub/checkpoints/")
        load_matching(model, state, weights.url)
