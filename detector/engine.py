"""One training epoch and one prediction pass. Both return values; neither writes files."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from .boxes import xyxy_to_xywh
from .data.records import LabelMap
from .errors import ConfigError, NonFiniteLossError


@dataclass(frozen=True)
class Precision:
    """Autocast settings: `dtype` None means full fp32; `scaled` means a GradScaler is needed (fp16)."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    return device


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """auto: bf16 (or fp16 with a scaler) on CUDA, fp32 on CPU. bf16 also runs on CPU; fp16 needs CUDA."""
    cuda = device.type == "cuda"
    if amp == "off" or (amp == "auto" and not cuda):
        return Precision(device.type, None)
    if amp == "fp16" and not cuda:
        raise ConfigError("train.amp=fp16 needs a CUDA GPU; use bf16 or off on CPU")
    if amp == "auto":
        return Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Precision(device.type, torch.bfloat16 if amp == "bf16" else torch.float16)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    precision: Precision,
    epoch: int,
    grad_clip: float = 0.0,
    progress: bool = False,
    any_rank_failed: Callable[[bool], bool] | None = None,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over `loader`, stepping the scheduler per batch. Returns mean losses and timing.

    Raises NonFiniteLossError (epoch, batch, loss components) when the loss is NaN or infinite; with several
    processes, `any_rank_failed(this_one_failed)` makes all of them raise together. `after_step()` runs
    after every optimizer and scheduler step (an EMA update).
    """
    model.train()
    sums: dict[str, float] = {}
    batches = images_seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress, unit="batch")
    for batch, (images, targets) in enumerate(bar):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with precision.autocast():
            losses = model(images, targets)
        loss = sum(losses.values())
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
        failed = not math.isfinite(sum(values.values()))
        if any_rank_failed(failed) if any_rank_failed is not None else failed:
            raise NonFiniteLossError(epoch, batch, values)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        batches += 1
        images_seen += len(images)
        bar.set_postfix(loss=f"{sum(values.values()):.3f}")
    seconds = time.perf_counter() - start
    means = {k: v / max(batches, 1) for k, v in sums.items()}
    return {"loss": sum(means.values()), **means, "train_seconds": seconds, "images": images_seen}


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: Precision,
    progress: bool = False,
    desc: str = "predict",
) -> list[dict[str, Any]]:
    """Run the model over `loader`; boxes come back in original image pixels (xyxy float32, CPU).

    Each target must hold "image_id" and "orig_size" (h, w); images are the resized tensors.
    """
    model.eval()
    out: list[dict[str, Any]] = []
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        images = [im.to(device, non_blocking=True) for im in images]
        with precision.autocast():
            detections = model(images)
        for image, target, det in zip(images, targets, detections):
            h, w = image.shape[-2:]
            oh, ow = (int(v) for v in target["orig_size"])
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            boxes = (det["boxes"].float() * scale).clamp_(min=0)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(max=ow)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(max=oh)
            out.append({"image_id": int(target["image_id"]), "boxes": boxes.cpu(),
                        "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
    return out


def to_coco_results(predictions: list[dict[str, Any]], label_map: LabelMap) -> list[dict[str, Any]]:
    """Model predictions -> COCO results (xywh pixels, the dataset's own category ids)."""
    return [r for p in predictions for r in coco_detections(
        p["image_id"], p["boxes"].numpy(), p["scores"].tolist(),
        [label_map.category_id(int(label)) for label in p["labels"].tolist()])]


def coco_detections(image_id: int, boxes: Any, scores: Iterable[float], category_ids: Iterable[int],
                    ) -> list[dict[str, Any]]:
    """One image's boxes (xyxy pixels) as COCO result records (xywh, rounded)."""
    return [{"image_id": image_id, "category_id": int(cid), "bbox": [round(v, 3) for v in box],
             "score": round(float(score), 5)}
            for box, score, cid in zip(xyxy_to_xywh(boxes).tolist(), scores, category_ids)]
