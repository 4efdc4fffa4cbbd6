"""Sliced inference: small objects in large images, predicted on overlapping tiles at full resolution.

An image is cut into tiles (`ensemble.slice`: a side in pixels, or `auto`: the median longest side of each
member's training images, which the member saw shrunk to its data.image_size, so a tile shows objects at
the scale the member learnt them), overlapping by `ensemble.slice_overlap`; with `ensemble.slice_whole` the
whole image, resized as without slicing, is one more tile (for the large objects). Each member's tile
predictions are mapped back to the image and merged into one prediction per member. A box that touches an
edge of its tile inside the image may be a piece of a cut object: it is dropped when it lies mostly inside
a box of its class that no tile edge cuts (the neighbouring tile's whole view); then two tiles' views of
one object are one by class-wise NMS at IoU NMS_IOU. Only cut pieces are judged by how much of them lies
inside another box: doing so for every box (SAHI's intersection over the smaller box) lets one large false
box swallow every cell inside it. The members' merged predictions are then fused by WBF like any ensemble's; fusing tiles by
WBF directly would divide the score of every box seen by one tile by the number of tiles.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Union

import numpy as np
import torch
from torchvision.ops import batched_nms

from ..errors import DetectorError

MATCH = 0.5  # a cut box lying this much inside a whole box of its class is that box's object
NMS_IOU = 0.5  # two tiles' views of one object
EDGE = 2.0  # px: a box this close to its window's edge touches it
MAX_TILES = 4096  # a 6000x4000 photo at 416 px tiles and overlap 0.3 makes 294


def tile_size(setting: Union[int, str], train_side: int, image_size: int) -> int:
    """The tile side of an `ensemble.slice` setting: `auto` is the side the model trained at (its images',
    or its crops' with data.augment.crop; its image_size where the checkpoint does not record it)."""
    return (train_side or image_size) if setting == "auto" else int(setting)


def predict_tiles(run: Callable[[list[np.ndarray]], list[dict[str, Any]]], array: np.ndarray, size: int,
                  overlap: float, whole: bool, skip_box_thr: float = 0.0, batch: int = 8) -> dict[str, torch.Tensor]:
    """One image's prediction from its tiles: `run` predicts a list of HxWx3 arrays (boxes in each one's
    pixels); with `whole`, the whole image is one more tile when there are several."""
    height, width = array.shape[:2]
    windows = tiles(height, width, size, overlap)
    if len(windows) > MAX_TILES:
        raise DetectorError(f"a {width}x{height} image makes {len(windows)} tiles of {size} px at overlap {overlap:g} "
                            f"(at most {MAX_TILES}); use a larger tile (--slice) or a smaller --overlap")
    if whole and len(windows) > 1:
        windows.append((0, 0, width, height))
    crops = [array[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    parts = [p for start in range(0, len(crops), batch) for p in run(crops[start:start + batch])]
    kept = [{k: p[k][p["scores"] >= skip_box_thr] for k in ("boxes", "scores", "labels")} for p in parts]
    return merge_tiles(kept, windows, width, height)


def tile_origins(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets along one axis: tiles of `size` stepping by size * (1 - overlap), the last one flush
    with the end; one tile when the image is no longer than `size`."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    count = math.ceil((length - size) / step) + 1
    return sorted({min(k * step, length - size) for k in range(count)})


def tiles(height: int, width: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of every tile of a height x width image."""
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in tile_origins(height, size, overlap) for x in tile_origins(width, size, overlap)]


def merge_tiles(parts: list[dict[str, torch.Tensor]], windows: list[tuple[int, int, int, int]], width: int,
                height: int) -> dict[str, torch.Tensor]:
    """One prediction from tile predictions (boxes in the pixels of their window (x0, y0, x1, y1))."""
    if not parts:
        return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    boxes = torch.cat([p["boxes"].float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
                       for p, (x0, y0, _, _) in zip(parts, windows)])
    scores = torch.cat([p["scores"].float() for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    cut = torch.cat([_cut(p["boxes"].float(), w, width, height) for p, w in zip(parts, windows)])
    keep = ~_covered_pieces(boxes, labels, cut, [len(p["boxes"]) for p in parts], windows)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = batched_nms(boxes, scores, labels, NMS_IOU)
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


def _cut(boxes: torch.Tensor, window: tuple[int, int, int, int], width: int, height: int) -> torch.Tensor:
    """Boxes that touch an edge of their window inside the image: an object the window may cut."""
    x0, y0, x1, y1 = window
    w, h = x1 - x0, y1 - y0
    return (((boxes[:, 0] <= EDGE) & (x0 > 0)) | ((boxes[:, 1] <= EDGE) & (y0 > 0)) |
            ((boxes[:, 2] >= w - EDGE) & (x1 < width)) | ((boxes[:, 3] >= h - EDGE) & (y1 < height)))


def _covered_pieces(boxes: torch.Tensor, labels: torch.Tensor, cut: torch.Tensor, counts: list[int],
                    windows: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """The cut boxes lying mostly inside a whole box of their class, judged window by window against the
    whole boxes that reach into that window (a piece inside a box means that box reaches into the piece's
    window): memory grows with one window's boxes, not with the image's (all x all took 7.6 GB at 15k boxes)."""
    covered = torch.zeros(len(boxes), dtype=torch.bool)
    whole, whole_labels = boxes[~cut], labels[~cut]
    start = 0
    for count, (x0, y0, x1, y1) in zip(counts, windows):
        rows = torch.arange(start, start + count)[cut[start:start + count]]
        start += count
        if not len(rows):
            continue
        near = (whole[:, 0] < x1) & (whole[:, 2] > x0) & (whole[:, 1] < y1) & (whole[:, 3] > y0)
        covered[rows] = _covered(boxes[rows], labels[rows], whole[near], whole_labels[near])
    return covered


def _covered(boxes: torch.Tensor, labels: torch.Tensor, whole: torch.Tensor, whole_labels: torch.Tensor
             ) -> torch.Tensor:
    """Boxes lying mostly (more than MATCH of their own area) inside a `whole` box of their class."""
    lt = torch.max(boxes[:, None, :2], whole[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], whole[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-9)
    same = labels[:, None] == whole_labels[None, :]
    return ((inter / area[:, None] > MATCH) & same).any(dim=1)
