"""Loader throughput (RBC, training pipeline) vs the model's training throughput on the same images.

Prints loader images/s with num_workers 0 and 2, the training step's images/s for the config's model,
and their ratio (target >= 5x: the loader is not the bottleneck).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from detector import config
from detector.data.dataset import CocoDetection, collate
from detector.data.transforms import build_train_transforms
from detector.engine import train_one_epoch
from detector.hardware import resolve_device, resolve_precision
from detector.models.faster_rcnn import build
from detector.optim import LrSchedule
from detector.data.sampling import box_shapes
from detector.data.splits import load_splits

RBC = Path(__file__).resolve().parents[1] / "examples" / "rbc"


def loader_rate(ds, batch_size: int, workers: int, images: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    seen, start = 0, time.perf_counter()
    for batch_images, _ in loader:
        seen += len(batch_images)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/rbc.yaml")
    parser.add_argument("--images", type=int, default=160, help="images drawn per loader measurement")
    parser.add_argument("--train-batches", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    cfg = config.load(args.config, [f"data.train.annotations={RBC / 'train' / '_annotations.coco.json'}",
                                    f"data.val.annotations={RBC / 'valid' / '_annotations.coco.json'}",
                                    "model.pretrained=false", *args.overrides])
    train_index, _ = load_splits(cfg)
    size, bs = cfg.data.image_size, cfg.train.batch_size
    ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, size), seed=0)
    rates = {w: loader_rate(ds, bs, w, args.images) for w in (0, 2)}

    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.amp, device)
    model, _ = build(cfg.model, num_classes=train_index.label_map.num_classes, image_size=size,
                     box_shapes=box_shapes(train_index, size))
    model.to(device)
    batches = [b for _, b in zip(range(args.train_batches + 1),
                                 torch.utils.data.DataLoader(ds, batch_size=bs, collate_fn=collate))]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule("cosine", 10_000, 0))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    step = dict(device=device, precision=precision, epoch=0)
    train_one_epoch(model, batches[:1], optimizer, scheduler, scaler, **step)  # warm-up
    stats = train_one_epoch(model, batches[1:], optimizer, scheduler, scaler, **step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_rate = stats["images"] / stats["train_seconds"]

    print(f"RBC train, {cfg.model.backbone} at {size}px, batch {bs}, device {device}")
    for w, r in rates.items():
        print(f"loader num_workers={w}: {r:8.1f} images/s   ratio to training {r / train_rate:7.1f}x (target >= 5x)")
    print(f"training step:          {train_rate:8.1f} images/s")


if __name__ == "__main__":
    main()
