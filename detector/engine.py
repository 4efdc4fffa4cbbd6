"""One training epoch and one prediction pass. Both return values; neither writes files."""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torchvision.ops import clip_boxes_to_image
from tqdm import tqdm

from .errors import NonFiniteLossError, TrainingError
from .hardware import Precision


# consecutive steps the fp16 GradScaler may skip (non-finite gradients, each halving its scale) before the
# run counts as diverged rather than overflowing: 2**-10 of the scale is far below any sane loss scale
MAX_SKIPPED_STEPS = 10

# how a step's failure crosses ranks: ("loss", components) for a non-finite loss, ("error", text) otherwise
Failure = tuple[str, Any]


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
    first_failure: Callable[[Failure | None], tuple[int, Failure] | None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over `loader`, stepping the scheduler per optimizer step. Returns mean losses,
    timing and the steps the scaler skipped.

    A non-finite loss raises NonFiniteLossError (epoch, batch, loss components), except under an enabled
    GradScaler (fp16): there the scaler skips the step and lowers its scale, and only MAX_SKIPPED_STEPS
    skipped steps in a row raise (a TrainingError). With several processes, `first_failure` (distributed's)
    makes every rank stop at the same step when one rank's batch failed to load, its forward pass raised
    or its loss is non-finite. `after_step()` runs after every optimizer and scheduler step (an EMA update).
    """
    model.train()
    agree = first_failure or (lambda failure: None if failure is None else (0, failure))
    sums: dict[str, float] = {}
    batches = images_seen = skipped = streak = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress, unit="batch")
    for batch, images, targets in _loaded(bar, agree, epoch):
        try:
            loss, values = _forward(model, images, targets, device, precision)
        except Exception as e:
            _stop_together(agree, e, epoch, batch)
            raise
        finite = math.isfinite(sum(values.values()))
        _stop_together(agree, None if finite or scaler.is_enabled() else ("loss", values), epoch, batch)
        stepped = _step(model, loss, optimizer, scaler, grad_clip)
        if stepped:  # the schedule counts the steps taken, as the optimizer does
            scheduler.step()
        if after_step is not None:
            after_step()
        streak = 0 if stepped else streak + 1
        _check_skipped(streak, scaler, epoch, batch)
        skipped += not stepped
        if stepped and finite:
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
        images_seen += len(images)
        bar.set_postfix(loss=f"{sum(values.values()):.3f}")
    seconds = time.perf_counter() - start
    means = {k: v / max(batches, 1) for k, v in sums.items()}
    return {"loss": sum(means.values()), **means, "train_seconds": seconds, "images": images_seen,
            "skipped_steps": skipped}


def _loaded(batches: Iterable, agree: Callable, epoch: int) -> Iterator[tuple[int, list, list]]:
    """(batch number, images, targets) of `batches`, each once every rank has said it loaded its own: a
    load error is heard by the other ranks before any of them enters the forward pass."""
    source = iter(batches)
    for batch in itertools.count():
        try:
            images, targets = next(source)
        except StopIteration:
            return
        except Exception as e:
            _stop_together(agree, e, epoch, batch)
            raise
        _stop_together(agree, None, epoch, batch)
        yield batch, images, targets


def _check_skipped(streak: int, scaler: torch.amp.GradScaler, epoch: int, batch: int) -> None:
    if streak >= MAX_SKIPPED_STEPS:
        raise TrainingError(f"the fp16 loss scaler skipped {streak} steps in a row up to epoch {epoch}, batch "
                            f"{batch}: the gradients are not finite at any scale (scale now "
                            f"{scaler.get_scale():.3g}); lower train.lr, enable train.grad_clip, or use "
                            "train.amp=bf16")


def _forward(model: nn.Module, images: list, targets: list, device: torch.device, precision: Precision,
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch on the device, its summed loss under autocast, and the loss components as floats."""
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    with precision.autocast():
        losses = model(images, targets)
    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
    return sum(losses.values()), values


def _step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          grad_clip: float) -> bool:
    """Backward and optimizer step through the scaler, clipping the unscaled gradients; False when the
    scaler skipped the step (non-finite gradients lower its scale, the same on every rank after DDP's
    all-reduce)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # the clip bounds the true gradient, not the loss-scaled one
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.step(optimizer)
    scaler.update()
    return not scaler.is_enabled() or scaler.get_scale() >= scale


def _stop_together(agree: Callable[[Failure | None], tuple[int, Failure] | None], mine: BaseException | Failure | None,
                   epoch: int, batch: int) -> None:
    """Every rank hears whether any rank's step failed. A rank whose own step raised returns to re-raise
    its error; the others raise a NonFiniteLossError with the failing rank's losses, or a TrainingError
    naming the rank that failed."""
    failure = (("error", f"{type(mine).__name__}: {mine}") if isinstance(mine, BaseException) else mine)
    agreed = agree(failure)
    if agreed is None or isinstance(mine, BaseException):
        return
    rank, (kind, detail) = agreed
    if kind == "loss":
        raise NonFiniteLossError(epoch, batch, detail)
    raise TrainingError(f"rank {rank} failed at epoch {epoch}, batch {batch}: {detail}; every rank stopped "
                        "with it (its own message above has the details)")


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
        detections: list[Any] = [None] * len(images)
        for group in padding_groups(images, getattr(model, "module", model).transform.size_divisible):
            with precision.autocast():
                for i, det in zip(group, model([images[i] for i in group])):
                    detections[i] = det
        for image, target, det in zip(images, targets, detections):
            h, w = image.shape[-2:]
            oh, ow = (int(v) for v in target["orig_size"])
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            boxes = clip_boxes_to_image(det["boxes"].float() * scale, (oh, ow))
            out.append({"image_id": int(target["image_id"]), "boxes": boxes.cpu(),
                        "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
    return out


def padding_groups(images: list[torch.Tensor], divisible: int) -> list[list[int]]:
    """Indices of `images` grouped by the shape the model pads them to (each side up to a multiple of
    `divisible`): a batch pads to its largest image, which changes the detections near a smaller image's
    edges, so each image is batched only with images it would be padded as alone, as an exported model is."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        groups.setdefault((-(-h // divisible), -(-w // divisible)), []).append(i)
    return list(groups.values())
