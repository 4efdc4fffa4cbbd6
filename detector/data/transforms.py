"""Albumentations pipelines: training augmentation, then the resize of the longest side to `size` (aspect
ratio kept, no padding). Boxes are pascal_voc (xyxy pixels). Evaluation does not augment: it resizes with
resize.fit_to_model, as exported models do.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import albumentations as A
import cv2
import numpy as np

from ..config import AugmentConfig, inline_pipeline
from ..errors import ConfigError


def _bbox_params(min_visibility: float = 0.0) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility,
        clip=True, filter_invalid_bboxes=True,
    )


def build_train_transforms(aug: AugmentConfig, size: int) -> A.Compose:
    """The training pipeline: the crop (`aug.crop`), then `aug.pipeline` (Albumentations' own serialized
    form) or the short-form keys, then the resize; the box parameters are always detector's, so no pipeline
    can change the box format."""
    steps = user_transforms(aug.pipeline) if aug.pipeline is not None else _short_form(aug, size)
    if aug.crop and mosaic_inputs(steps):
        raise ConfigError("data.augment.crop and a Mosaic in data.augment.pipeline: choose one (a Mosaic shrinks "
                          "whole images into its cells, which undoes training at full resolution)")
    crop = [CropAroundBox(aug.crop, aug.crop)] if aug.crop else []
    return A.Compose([*crop, *steps, A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR)],
                     bbox_params=_bbox_params(aug.min_visibility))


class CropAroundBox(A.AtLeastOneBBoxRandomCrop):
    """A crop of at most height x width holding one of the boxes whole (a random crop where there is none);
    an image smaller on a side keeps that side whole, so every image trains at its own resolution."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        full = self.height, self.width
        self.height, self.width = min(full[0], params["shape"][0]), min(full[1], params["shape"][1])
        try:
            return super().get_params_dependent_on_data(params, data)
        finally:
            self.height, self.width = full


def mosaic_inputs(steps: list[Any]) -> list[tuple[str, int]]:
    """(metadata key, number of other images) of each Mosaic in `steps`: what the dataset must supply."""
    return [(t.metadata_key, t.grid_yx[0] * t.grid_yx[1] - 1) for t in _leaves(steps) if isinstance(t, A.Mosaic)]


def user_transforms(spec: dict[str, Any] | str) -> list[A.BasicTransform]:
    """The transforms of a pipeline in Albumentations' serialized form ({"transform": {"__class_fullname__":
    "Compose", "transforms": [...]}}, as A.to_dict writes it), or of the YAML/JSON file holding one."""
    d = inline_pipeline(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            built = A.from_dict(d if "transform" in d else {"transform": d})
        except KeyError as e:
            raise ConfigError(f"data.augment.pipeline: {e} is not an Albumentations transform; use the class "
                              "names Albumentations serializes (e.g. HorizontalFlip, CLAHE, CoarseDropout)") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.augment.pipeline: {e}") from None
        except AttributeError:
            raise ConfigError("data.augment.pipeline: every transform must be a mapping with __class_fullname__ "
                              "and its arguments (e.g. {__class_fullname__: HorizontalFlip, p: 0.5}), not a "
                              "bare name") from None
    invalid = [str(w.message) for w in caught if "not valid" in str(w.message)]
    if invalid:
        raise ConfigError(f"data.augment.pipeline: {invalid[0]}; fix the argument name")
    return list(built.transforms) if isinstance(built, A.BaseCompose) else [built]


def check_pipeline(aug: AugmentConfig, size: int) -> None:
    """Run every transform of the training pipeline once, forced on, on a uint8 RGB image with one box: a
    transform that fails when called (MaskDropout needs a mask) or returns anything but uint8 HxWx3
    (Normalize, ToFloat, ToTensorV2, one-channel ToGray: the model normalises its inputs itself) is a
    ConfigError naming it, raised before anything trains on it."""
    steps = user_transforms(aug.pipeline) if aug.pipeline is not None else _short_form(aug, size)
    height, width = max(size, 256), max(size, 320)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = [width * 0.2, height * 0.2, width * 0.6, height * 0.7]
    for leaf in _leaves(steps):
        name = type(leaf).__name__
        forced = copy.deepcopy(leaf)
        forced.p = 1.0
        others = {key: [{"image": image, "bboxes": np.array([box]), "labels": np.array([1])}] * count
                  for key, count in mosaic_inputs([leaf])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = A.Compose([forced], bbox_params=_bbox_params())(image=image, bboxes=[box], labels=[1],
                                                                      **others)["image"]
            except Exception as e:  # any failure of a user's transform is theirs to fix; name it
                raise ConfigError(f"data.augment.pipeline: {name} fails on a {height}x{width} RGB image with one "
                                  f"box ({type(e).__name__}: {e}); remove it or fix its arguments") from None
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3):
            got = (f"{out.dtype} {'x'.join(map(str, out.shape))}" if hasattr(out, "shape") else type(out).__name__)
            raise ConfigError(f"data.augment.pipeline: {name} turns the uint8 HxWx3 image into {got}; remove it: "
                              "detector normalises inside the model, so Normalize, ToFloat, ToTensorV2 and "
                              "one-channel ToGray do not belong in the pipeline")


def _leaves(steps: list[Any]) -> list[A.BasicTransform]:
    out = []
    for t in steps:
        out += _leaves(list(t.transforms)) if isinstance(t, A.BaseCompose) else [t]
    return out


def pipeline_dict(pipeline: A.Compose) -> dict[str, Any]:
    """What a run trained with, in Albumentations' own form (written to RUN/augment.json)."""
    return A.to_dict(pipeline)


def _short_form(aug: AugmentConfig, size: int) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if aug.mosaic > 0:  # first, so its other images are as raw as the image itself
        steps.append(A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), fill=114,
                              p=aug.mosaic))
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
    return steps
