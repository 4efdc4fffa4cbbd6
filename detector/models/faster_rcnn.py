"""build_model: a torchvision FasterRCNN from a backbone name, class count and (optionally) fitted anchors."""
from __future__ import annotations

from typing import Sequence

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
    pretrained: bool | str = False,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    heads: str = "v1",
    max_detections: int = 100,
    rpn_proposals_train: int = 2000,
    rpn_proposals_test: int = 1000,
    box_samples_per_image: int = 512,
    body: nn.Module | None = None,
) -> FasterRCNN:
    """A FasterRCNN for `num_classes` foreground classes (labels 1..num_classes, 0 = background).

    `anchor_shapes`: per FPN level, (w, h) anchors in input pixels (from `fit_anchors`); None keeps
    torchvision's default generator. `pretrained`: True, a local weight file, or False.
    `heads`: "v1" (torchvision's fasterrcnn_resnet50_fpn: MLP box head) or "v2" (fasterrcnn_resnet50_fpn_v2:
    BatchNorm FPN, 2-conv RPN head, 4-conv + FC box head; trains much better from scratch).
    `body`: an already built `build_backbone(backbone, ...)`, to reuse it.
    """
    if num_classes < 1:
        raise ConfigError("the dataset needs at least one category to train a detector")
    if body is None:
        body = build_backbone(backbone, pretrained=_backbone_pretrained(backbone, pretrained, representation_size),
                              trainable_layers=trainable_layers,
                              frozen_bn=frozen_bn, fpn_channels=fpn_channels, fpn_norm=heads == "v2")
    levels = num_levels(body)
    if anchor_shapes is not None and len(anchor_shapes) != levels:
        raise ConfigError(f"anchors have {len(anchor_shapes)} levels but backbone {backbone} has {levels}")
    generator = FittedAnchorGenerator(anchor_shapes) if anchor_shapes is not None else default_generator(levels)
    per_location = generator.num_anchors_per_location()
    if len(set(per_location)) != 1:
        raise ConfigError("every FPN level needs the same number of anchors per location")
    channels, resolution = body.out_channels, 7
    if heads == "v2":
        rpn_head = RPNHead(channels, per_location[0], conv_depth=2)
        box_head = FastRCNNConvFCHead((channels, resolution, resolution), [channels] * 4, [representation_size],
                                      norm_layer=nn.BatchNorm2d)
    else:
        rpn_head = RPNHead(channels, per_location[0])
        box_head = TwoMLPHead(channels * resolution ** 2, representation_size)
    model = FasterRCNN(
        body,
        rpn_anchor_generator=generator,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        box_score_thresh=0.0,
        box_detections_per_img=max_detections,
        rpn_pre_nms_top_n_train=rpn_proposals_train, rpn_post_nms_top_n_train=rpn_proposals_train,
        rpn_pre_nms_top_n_test=rpn_proposals_test, rpn_post_nms_top_n_test=rpn_proposals_test,
        box_batch_size_per_image=box_samples_per_image,
    )
    model.transform = PreResizedTransform(image_size, image_size, list(body.image_mean), list(body.image_std))
    _load_detector_weights(model, backbone, pretrained, representation_size, heads)
    return model


def build(
    cfg: ModelConfig,
    *,
    num_classes: int,
    image_size: int,
    anchor_shapes: Sequence[Sequence[tuple[float, float]]] | None = None,
    box_shapes: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[FasterRCNN, AnchorFit | None]:
    """The model a config describes. With `anchors: kmeans` and no `anchor_shapes`, anchors are fitted to
    `box_shapes` ((N, 2) training box w, h in input pixels) and the fit is returned too."""
    body = build_backbone(cfg.backbone, pretrained=_backbone_pretrained(cfg.backbone, cfg.pretrained,
                                                                     cfg.representation_size),
                          trainable_layers=cfg.trainable_layers,
                          frozen_bn=cfg.frozen_bn, fpn_channels=cfg.fpn_channels, fpn_norm=cfg.heads == "v2")
    fit = None
    if anchor_shapes is None and cfg.anchors == "kmeans":
        if box_shapes is None or len(box_shapes) == 0:
            raise ConfigError("model.anchors=kmeans needs training boxes to fit; the training split has none")
        fit = fit_anchors(box_shapes, num_levels=num_levels(body), per_level=cfg.anchors_per_level, seed=seed)
        anchor_shapes = fit.shapes
    model = build_model(
        backbone=cfg.backbone, num_classes=num_classes, image_size=image_size, anchor_shapes=anchor_shapes,
        pretrained=cfg.pretrained, representation_size=cfg.representation_size, heads=cfg.heads,
        max_detections=cfg.max_detections, rpn_proposals_train=cfg.rpn_proposals_train,
        rpn_proposals_test=cfg.rpn_proposals_test, box_samples_per_image=cfg.box_samples_per_image, body=body,
    )
    return model, fit


def normalization(model: FasterRCNN) -> dict[str, list[float]]:
    """The input normalisation (RGB in [0, 1]) the model applies: saved in every checkpoint."""
    return {"mean": [float(v) for v in model.transform.image_mean],
            "std": [float(v) for v in model.transform.image_std]}


def set_normalization(model: FasterRCNN, values: dict[str, Sequence[float]]) -> None:
    model.transform.image_mean = [float(v) for v in values["mean"]]
    model.transform.image_std = [float(v) for v in values["std"]]


def _uses_coco_detector(backbone: str, pretrained: bool | str, representation_size: int) -> bool:
    """Whether `pretrained: true` means torchvision's whole COCO Faster R-CNN (which covers the backbone)."""
    return pretrained is True and backbone == "resnet50_fpn" and representation_size == 1024


def _backbone_pretrained(backbone: str, pretrained: bool | str, representation_size: int) -> bool | str:
    """Backbone-only weights are not downloaded when the COCO detector weights will replace them."""
    return False if _uses_coco_detector(backbone, pretrained, representation_size) else pretrained


def _load_detector_weights(model: nn.Module, backbone: str, pretrained: bool | str, representation_size: int,
                           heads: str) -> None:
    """Whole-detector weights: torchvision's COCO Faster R-CNN (v1 or v2) for resnet50_fpn, or a detector file.

    Tensors whose shape differs (class predictor, an RPN head with fitted anchors) keep their init.
    """
    if isinstance(pretrained, str) and pretrained and pretrained != PACKAGED:
        state = read_state_dict(pretrained)
        if is_detector_state(state):
            load_matching(model, state, pretrained)
    elif _uses_coco_detector(backbone, pretrained, representation_size):
        weights = FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1 if heads == "v2" else FasterRCNN_ResNet50_FPN_Weights.COCO_V1
        state = fetch(lambda: weights.get_state_dict(progress=False), "fasterrcnn_resnet50_fpn (torchvision COCO)",
                      "~/.cache/torch/hub/checkpoints/")
        load_matching(model, state, weights.url)
