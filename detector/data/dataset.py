"""The training and evaluation dataset: a CocoIndex as (image tensor, target) pairs for torchvision models."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision.datasets import VisionDataset

from .coco import CocoIndex
from .images import read_image
from .resize import fit_array
from .transforms import mosaic_inputs


class CocoDetection(VisionDataset):
    """(image tensor float32 CHW in [0, 1], target dict) pairs for torchvision detection models.

    `transforms` is an Albumentations pipeline called as transforms(image=, bboxes=, labels=) with
    pascal_voc boxes; boxes it removes take their labels with them. With a `seed`, the augmentation of
    sample i in epoch e depends only on (seed, e, i): the same in any worker and after a resume. A Mosaic
    in the pipeline gets its other images (its metadata) drawn from that same (seed, e, i) stream.
    With a `size` (evaluation), each image is then resized as every evaluated and deployed image is
    (resize.fit_to_model: longest side `size`), its boxes with it; without, it keeps the pipeline's size.
    """

    def __init__(self, index: CocoIndex, transforms: Callable | None = None, seed: int | None = None,
                 bit_depth: int = 16, size: int | None = None):
        super().__init__(root=str(index.images_dir))
        self.index, self.bit_depth, self.size = index, bit_depth, size
        self.pipeline = transforms
        self.mosaic = mosaic_inputs(list(transforms.transforms)) if hasattr(transforms, "transforms") else []
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.index.images[i]
        image = read_image(rec.path, self.bit_depth)
        boxes, labels = rec.boxes, self.index.labels(rec)
        if self.pipeline is not None:
            stream = np.random.SeedSequence([self.seed, self.epoch, i]) if self.seed is not None else None
            if stream is not None and hasattr(self.pipeline, "set_random_seed"):
                self.pipeline.set_random_seed(int(stream.generate_state(1)[0]))
            out = self.pipeline(image=image, bboxes=boxes, labels=labels, **self._mosaic_metadata(i, stream))
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        if self.size is None:
            return image_tensor(image), make_target(rec.id, boxes, labels, (rec.height, rec.width))
        x, ratio = fit_array(image, self.size)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / ratio.numpy()
        return x, make_target(rec.id, boxes, labels, (rec.height, rec.width))

    def _mosaic_metadata(self, i: int, stream: np.random.SeedSequence | None) -> dict[str, list[dict]]:
        """Each Mosaic's other images: distinct from image i, drawn from the sample's own stream."""
        if not self.mosaic:
            return {}
        rng = np.random.default_rng(stream.spawn(1)[0] if stream is not None else None)
        out = {}
        for key, count in self.mosaic:
            others = rng.choice(len(self) - 1, size=min(count, len(self) - 1), replace=False)
            out[key] = [self._raw(int(k) + (k >= i)) for k in others]  # skipping i itself
        return out

    def _raw(self, k: int) -> dict[str, np.ndarray]:
        rec = self.index.images[k]
        return {"image": read_image(rec.path, self.bit_depth), "bboxes": rec.boxes, "labels": self.index.labels(rec)}


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array -> the (3, H, W) float tensor in [0, 1] the model takes."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def make_target(image_id: int, boxes: np.ndarray, labels: np.ndarray,
                orig_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A torchvision detection target; `orig_size` is the (height, width) of the file, for mapping back."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = b[keep]
    return {
        "boxes": b,
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)[keep],
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
        "iscrowd": torch.zeros(len(b), dtype=torch.int64),
        "orig_size": torch.tensor(orig_size, dtype=torch.int64),
    }


def model_inputs(arrays: list[np.ndarray], size: int, flip: bool = False) -> tuple[tuple, tuple]:
    """Resized (resize.fit_to_model) and optionally flipped image tensors, with targets carrying each
    original size, as a loader batch."""
    images, targets = [], []
    no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    for i, a in enumerate(arrays):
        a = a[:, ::-1] if flip else a
        images.append(fit_array(a, size)[0])
        targets.append(make_target(i, no_boxes, no_labels, a.shape[:2]))
    return tuple(images), tuple(targets)


def collate(batch: list) -> tuple[tuple, tuple]:
    images, targets = zip(*batch)
    return images, targets
