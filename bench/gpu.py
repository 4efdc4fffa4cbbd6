"""The GPU numbers of detector in one run (bench/gpu.sh calls it): one JSON, every number measured here.

- train: images/s of detector's training step (engine.train_one_epoch) in fp32, bf16 and fp16 (GradScaler)
  beside the plain torchvision loop a user writes (fp32, no autocast) on the same batches of RBC images,
  for resnet50_fpn at 800 px (random weights: the device has no internet) and the quickstart model at its
  352 px; the peak GPU memory of each.
- infer: images/s of the same models predicting those images in each precision (engine.predict, batch 8).
- finetune: one epoch of configs/quickstart.yaml on CUDA (train.amp auto), its mAP@0.5 on examples/rbc/valid.

Published numbers to compare with: Detectron2's R50-FPN Faster R-CNN 1x trains at about 9.5 images/s and
infers at about 26 images/s on one V100 (its model zoo, 800 px).

    python bench/gpu.py --out gpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from detector import config
from detector.data.dataset import CocoDetection, collate
from detector.data.sampling import box_shapes
from detector.data.splits import load_splits
from detector.data.transforms import build_train_transforms
from detector.engine import predict, train_one_epoch
from detector.hardware import Precision
from detector.models.faster_rcnn import build
from detector.optim import LrSchedule
from detector.training.fit import fit
from train_step import plain_loop  # bench/: the plain torchvision loop a user writes

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODELS = {"resnet50_fpn": (ROOT / "configs" / "resnet50_fpn.yaml", 800, ["model.pretrained=false"]),
          "quickstart": (ROOT / "configs" / "quickstart.yaml", 352, [])}


def timed(fn, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def speeds(name: str, device: torch.device, batches: int) -> dict:
    path, size, extra = MODELS[name]
    cfg = config.load(path, [f"data.image_size={size}", *extra])
    train_index, val_index = load_splits(cfg, log=lambda s: None)
    ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, size), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, collate_fn=collate, num_workers=4)
    data = [b for _, b in zip(range(batches), loader)]
    images = sum(len(b[0]) for b in data)
    evaluation = list(torch.utils.data.DataLoader(CocoDetection(val_index, size=size),
                                                  batch_size=8, collate_fn=collate))
    model, _ = build(cfg.model, num_classes=train_index.label_map.num_classes, image_size=size,
                     box_shapes=box_shapes(train_index, size))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule("cosine", 10_000, 0))
    out = {"image_size": size, "batch_size": cfg.train.batch_size, "train_images": images}
    plain_loop(model, data[:2], optimizer, device)  # warm-up: cudnn's algorithm search, allocations
    torch.cuda.reset_peak_memory_stats(device)
    out["plain_fp32"] = {"train_images_per_s": images / timed(lambda: plain_loop(model, data, optimizer, device), device),
                         "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}
    for label, dtype in PRECISIONS.items():
        precision = Precision("cuda", dtype)
        scaler = torch.amp.GradScaler("cuda", enabled=precision.scaled)

        def ours():
            train_one_epoch(model, data, optimizer, scheduler, scaler, device=device, precision=precision, epoch=0,
                            grad_clip=cfg.train.grad_clip)

        ours()
        torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(ours, device)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
        infer = timed(lambda: predict(model, evaluation, device=device, precision=precision), device)
        out[label] = {"train_images_per_s": images / seconds, "peak_gib": peak,
                      "infer_images_per_s": len(val_index.images) / infer}
    out["ours_fp32_over_plain"] = out["fp32"]["train_images_per_s"] / out["plain_fp32"]["train_images_per_s"]
    return out


def finetune(device: torch.device, keep: Path) -> dict:
    """One epoch of the quickstart recipe on `device`, its run kept in `keep` (best.pt: what gpu.sh benchmarks)."""
    cfg = config.load(ROOT / "configs" / "quickstart.yaml", ["train.epochs=1", f"train.device={device}",
                                                              "train.num_workers=4"])
    train_index, val_index = load_splits(cfg, log=lambda s: None)
    start = time.perf_counter()
    result = fit(cfg, train_index, val_index, keep, force=True, progress=False, log=print)
    seconds = time.perf_counter() - start
    m = result.best_metrics
    return {"map_50": m.map_50, "map": m.map, "seconds": seconds, "learned": m.map_50 >= 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--keep", default=str(Path(tempfile.gettempdir()) / "detector-gpu-run"),
                        help="where the fine-tune's run folder goes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU")
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True  # as detector sets it on CUDA (distributed.setup)
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "host": platform.node(),
              "bf16_supported": torch.cuda.is_bf16_supported()}
    for name in MODELS:
        report[name] = speeds(name, device, args.batches)
        print(name, json.dumps(report[name], indent=1), flush=True)
    report["finetune"] = finetune(device, Path(args.keep))
    print("finetune", report["finetune"], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
