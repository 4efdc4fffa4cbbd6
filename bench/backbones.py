"""Milliseconds per image of each shipped backbone config at one size: inference (`detector benchmark`'s eager
row) and one training step, with the quickstart's tf_efficientnet_lite0 as the yardstick.

    python bench/backbones.py --size 416

Each config's model exactly as shipped (FPN width, heads, trainable layers), random initialisation (the
published weights cannot be downloaded here; timing does not depend on them) and torchvision's default
anchors (k-means anchors change the anchor shapes, not their count). Images: examples/rbc/valid. fp32, the
process's threads; prints the CPU model, since the numbers are per CPU.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from detector import config
from detector.checkpoint import Checkpoint, save_checkpoint
from detector.data.coco import load_coco
from detector.deploy.benchmark import benchmark
from detector.deploy.runtimes import image_array
from detector.models import faster_rcnn

CONFIGS = ("configs/quickstart.yaml", "configs/resnet50_fpn.yaml", "configs/efficientnet_b3.yaml",
           "configs/swin_s.yaml")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def untrained(path: Path, cfg: config.Config, size: int) -> torch.nn.Module:
    model, _ = faster_rcnn.build(replace(cfg.model, pretrained=False, anchors="default"), num_classes=2,
                                 image_size=size)
    save_checkpoint(path, Checkpoint(model=model.state_dict(), epoch=0, image_size=size,
                                     config=config.resolve_paths(cfg).to_dict(),
                                     label_map={"category_ids": [1, 2], "names": ["rbc", "wbc"]},
                                     normalization=faster_rcnn.normalization(model)))
    return model


def train_step_ms(model: torch.nn.Module, size: int, batch: int = 2, repeats: int = 3) -> float:
    """Best of `repeats` timed steps (forward, backward, SGD step) on a batch of `batch` images, per image."""
    images = [torch.rand(3, size, size) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[40.0, 50.0, 120.0, 140.0], [200.0, 210.0, 260.0, 300.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(batch)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    index = load_coco("examples/rbc/valid/_annotations.coco.json", check_images=False)
    arrays = [image_array(r.path) for r in index.images[:args.images]]
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, fp32, {args.size} px, {len(arrays)} RBC images")
    print(f"{'config':<30} {'backbone':<16} {'params M':>8} {'infer ms/img':>12} {'x lite0':>8} "
          f"{'train ms/img':>12} {'x lite0':>8}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            cfg = config.load(name, [f"data.image_size={args.size}"])
            path = Path(tmp) / (Path(name).stem + ".pt")
            model = untrained(path, cfg, args.size)
            [row] = benchmark(path, arrays, runtimes=["eager"], repeats=3).rows
            train = train_step_ms(model, args.size)
            base = base or (row.ms_per_image, train)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            print(f"{name:<30} {cfg.model.backbone:<16} {params:>8.1f} {row.ms_per_image:>12.0f} "
                  f"{row.ms_per_image / base[0]:>8.2f} {train:>12.0f} {train / base[1]:>8.2f}")


if __name__ == "__main__":
    main()
