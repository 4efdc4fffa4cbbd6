"""What a run feeds the model with: box statistics of the training split (for anchors, class weights and
the balanced sampler), its datasets, and the loaders, whose training order depends only on (seed, epoch)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from .. import distributed
from ..config import Config
from .coco import CocoIndex
from .dataset import CocoDetection, collate
from .transforms import build_train_transforms


def box_shapes(index: CocoIndex, image_size: int, crop: int = 0) -> np.ndarray:
    """(N, 2) widths and heights of the training boxes in the resized input space the model sees (of a crop
    of at most `crop` px a side, with data.augment.crop)."""
    shapes = []
    for rec in index.images:
        if len(rec.boxes):
            scale = image_size / input_side(rec.width, rec.height, crop)
            shapes.append((rec.boxes[:, 2:] - rec.boxes[:, :2]) * scale)
    return np.concatenate(shapes) if shapes else np.zeros((0, 2), np.float32)


def input_side(width: int, height: int, crop: int = 0) -> int:
    """The longest side of what a training image becomes before the resize: itself, or its crop."""
    return max(min(width, crop), min(height, crop)) if crop else max(width, height)


def train_side(index: CocoIndex, crop: int = 0) -> int:
    """The median longest side of the training inputs: the scale the model learns objects at, and the tile
    side of `ensemble.slice: auto`."""
    return int(np.median([input_side(r.width, r.height, crop) for r in index.images]))


def class_counts(index: CocoIndex) -> list[int]:
    """Training boxes per class, in label order."""
    labels = np.concatenate([index.labels(r) for r in index.images] or [np.zeros(0, np.int64)])
    return np.bincount(labels, minlength=index.label_map.num_classes + 1)[1:].tolist()


def balanced_weights(index: CocoIndex) -> np.ndarray:
    """Per-image sampling weight: the largest inverse class frequency among its classes (per fold)."""
    counts: dict[int, int] = {}
    for rec in index.images:
        for cid in set(rec.category_ids.tolist()):
            counts[cid] = counts.get(cid, 0) + 1
    floor = 1.0 / max(len(index.images), 1)
    return np.array([max((1.0 / counts[c] for c in set(rec.category_ids.tolist())), default=floor)
                     for rec in index.images], dtype=np.float64)


def loader(dataset, batch_size: int, num_workers: int, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), **kwargs)


def train_set(cfg: Config, index: CocoIndex) -> CocoDetection:
    """The training images with the config's augmentation, seeded by train.seed."""
    return CocoDetection(index, build_train_transforms(cfg.data.augment, cfg.data.image_size), seed=cfg.train.seed,
                         bit_depth=cfg.data.bit_depth)


def val_loader(cfg: Config, index: CocoIndex, w: distributed.World) -> DataLoader:
    """The validation images resized as evaluation resizes them (this rank's shard of them under torchrun);
    whole, one at a time, when they are predicted on tiles (ensemble.slice)."""
    # in order of aspect ratio, so a batch holds images of one padded shape (engine.padding_groups)
    images = sorted(index.images, key=lambda r: r.height / max(r.width, 1))
    shard = replace(index, images=images[w.rank::w.size] if w.active else images)
    # made once per fit and read every epoch, with nothing that changes between epochs: on a GPU machine its
    # workers stay up between epochs (the training loader is rebuilt each epoch from its (seed, epoch) order)
    keep = dict(persistent_workers=torch.cuda.is_available() and cfg.train.num_workers > 0)
    if cfg.ensemble.slice:
        return loader(CocoDetection(shard, bit_depth=cfg.data.bit_depth), 1, cfg.train.num_workers, **keep)
    return loader(CocoDetection(shard, bit_depth=cfg.data.bit_depth, size=cfg.data.image_size),
                  cfg.eval.batch_size, cfg.train.num_workers, **keep)


def train_loader(dataset: CocoDetection, cfg: Config, epoch: int, weights: np.ndarray | None,
                 w: distributed.World) -> DataLoader:
    """A loader whose order depends only on (seed, epoch), so a resumed run sees the same batches. Under
    torchrun each rank takes its share of that same global order (distributed.ShardSampler)."""
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    if w.active:  # the orders WeightedRandomSampler and a shuffling loader would draw from this generator
        order = (torch.multinomial(torch.as_tensor(weights, dtype=torch.double), len(weights), True,
                                   generator=generator) if weights is not None
                 else torch.randperm(len(dataset), generator=generator)).tolist()
        return loader(dataset, distributed.local_batch(w, cfg.train.batch_size), cfg.train.num_workers,
                      sampler=distributed.ShardSampler(order, w))
    if weights is not None:
        sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(weights), replacement=True,
                                        generator=generator)
        return loader(dataset, cfg.train.batch_size, cfg.train.num_workers, sampler=sampler)
    return loader(dataset, cfg.train.batch_size, cfg.train.num_workers, shuffle=True, generator=generator)
