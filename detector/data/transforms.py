"""Albumentations pipelines: training augmentation + resize, and an eval pipeline that only resizes.

Both resize so the longest side equals `size` (aspect ratio kept, no padding): predictions map back to
original pixels by the per-axis ratio of original to resized size. Boxes are pascal_voc (xyxy pixels).
"""
from __future__ import annotations

import albumentations as A
import cv2

from ..config import AugmentConfig


def _bbox_params(min_visibility: float = 0.0) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility,
        clip=True, filter_invalid_bboxes=True,
    )


def build_eval_transforms(size: int) -> A.Compose:
    return A.Compose([A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR)], bbox_params=_bbox_params())


def build_train_transforms(aug: AugmentConfig, size: int) -> A.Compose:
    steps: list[A.BasicTransform] = []
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip > 0:
        steps.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate90 > 0:
        steps.append(A.RandomRotate90(p=aug.rotate90))
    if aug.affine_p > 0 and (aug.scale != (1.0, 1.0) or aug.translate > 0):
        steps.append(A.Affine(scale=aug.scale, translate_percent=(-aug.translate, aug.translate),
                              border_mode=cv2.BORDER_CONSTANT, fill=114, p=aug.affine_p))
    if aug.color > 0:
        steps.append(A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=15, p=1.0),
        ], p=aug.color))
    if aug.blur > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=aug.blur))
    steps.append(A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR))
    return A.Compose(steps, bbox_params=_bbox_params(aug.min_visibility))
