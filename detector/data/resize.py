"""The one way an image becomes a model's input at evaluation and prediction time, and in exported models.

`fit_to_model(image, size)`: a uint8 RGB (H, W, 3) tensor -> a (3, h, w) float32 tensor in [0, 1] whose
longest side is `size` (aspect ratio kept; bilinear, half-pixel centres, no antialiasing, on floats), and
the (w, h, w, h) ratio that maps boxes in its pixels back to the image's. The same code runs in Python,
compiled by TorchScript and traced into ONNX (`detector export`), so a deployed model sees the pixels that
`detector evaluate` and `detector predict` scored. The model normalises and pads its input itself.

Training resizes its augmented images with Albumentations' LongestMaxSize (OpenCV's bilinear on uint8, the
same interpolation rounded to whole levels): training only needs the same geometry, not the same pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.onnx import operators


def fit_to_model(image: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(resized (3, h, w) float32 in [0, 1], ratio (4,): image pixels per resized pixel as (w, h, w, h))."""
    x = image.permute(2, 0, 1).to(torch.float32) / 255.0
    shape = _shape(x)
    scale = float(size) / torch.max(shape).to(torch.float32)
    new = torch.clamp(torch.round(shape.to(torch.float32) * scale), min=1.0).to(torch.int64)
    if torch.jit.is_scripting():
        x = F.interpolate(x[None], size=[int(new[0]), int(new[1])], mode="bilinear", align_corners=False)[0]
    else:
        x = _resize(x, new)
    return x, (shape.to(torch.float32) / new.to(torch.float32)).flip(0).repeat(2)


def fit_array(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fit_to_model of an (H, W, 3) uint8 RGB array (any strides or a read-only view, e.g. a tile of a
    memory-mapped image: such an array is copied first, since torch only wraps writable memory)."""
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, order="C")
    return fit_to_model(torch.from_numpy(image), size)


def _shape(x: torch.Tensor) -> torch.Tensor:
    """(height, width) of a (C, H, W) tensor, symbolic while the ONNX exporter traces."""
    if torchvision._is_tracing():
        return operators.shape_as_tensor(x)[-2:]
    return torch.tensor(x.shape[-2:])


def _resize(x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to `new` (height, width): sizes stay symbolic while the ONNX exporter traces."""
    size = [new[0], new[1]] if torchvision._is_tracing() else [int(new[0]), int(new[1])]
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
