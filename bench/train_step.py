"""The toolkit's training step (engine.train_one_epoch) vs a plain torchvision loop, side by side.

Same model, same batches, same thread count; the two alternate over several rounds and the best round of
each is compared. Prints seconds per batch and ours / plain (target <= 1.03). The toolkit's step also
checks the loss for NaN, keeps per-component means, clips gradients and steps the LR schedule.
"""
from __future__ import annotations

import argparse
import time

import torch

from detector import config
from detector.data.dataset import CocoDetection, collate
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.data.transforms import build_train_transforms
from detector.engine import train_one_epoch
from detector.hardware import resolve_device, resolve_precision
from detector.models.faster_rcnn import build
from detector.optim import LrSchedule
from detector.data.sampling import box_shapes
from detector.data.splits import load_splits


def plain_loop(model, batches, optimizer, device) -> None:
    model.train()
    for images, targets in batches:
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/sample.yaml")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default="/tmp/detector-bench-sample")
    args = parser.parse_args()

    paths = write_sample_dataset(args.data, SampleSpec(images=60))
    cfg = config.load(args.config, [f"data.train.annotations={paths['train']}", f"data.val.annotations={paths['val']}"])
    train_index, _ = load_splits(cfg)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.amp, device)
    ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, cfg.data.image_size), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, collate_fn=collate)
    batches = [b for _, b in zip(range(args.batches), loader)]
    model, _ = build(cfg.model, num_classes=train_index.label_map.num_classes, image_size=cfg.data.image_size,
                     box_shapes=box_shapes(train_index, cfg.data.image_size))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule("cosine", 10_000, 0))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)

    def ours():
        train_one_epoch(model, batches, optimizer, scheduler, scaler, device=device, precision=precision,
                        epoch=0, grad_clip=cfg.train.grad_clip)

    def plain():
        plain_loop(model, batches, optimizer, device)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(batches)

    plain()  # warm-up
    t_ours, t_plain = [], []
    for _ in range(args.rounds):
        t_plain.append(timed(plain))
        t_ours.append(timed(ours))
    print(f"device {device}, threads {torch.get_num_threads()}, backbone {cfg.model.backbone}, "
          f"batch {cfg.train.batch_size}, image size {cfg.data.image_size}, grad_clip {cfg.train.grad_clip}")
    print(f"plain torchvision loop: {min(t_plain):.4f} s/batch")
    print(f"toolkit train step:     {min(t_ours):.4f} s/batch")
    print(f"ratio ours / plain: {min(t_ours) / min(t_plain):.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
