"""How far `detector` is from this machine's limit: FLOPs per image, achieved GFLOP/s and the share of peak.

For the main job's model (configs/quickstart.yaml) on RBC images at its size: the FLOPs of one training
image (forward and backward) and one inference image, counted by torch.utils.flop_counter; the seconds of a
training step (batch of 4, engine.train_one_epoch) and of an inference batch, per precision (fp32, bf16
autocast); and the machine's peak per precision, measured here: a 2048 x 2048 matmul and a 3x3 convolution
(64 -> 64 channels on 4 x 64 x 96 x 96). The share printed is achieved / the better of the two peaks: far
below 100%, the model is bound by memory traffic (depthwise convolutions, RoI ops), which a faster
arithmetic unit (bf16) does not help.

    python bench/roofline.py            # about 3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import quickstart_parts  # noqa: E402  (bench/precision.py)

from detector.engine import predict, train_one_epoch
from detector.hardware import Precision
from detector.hardware import cpu_precision

PRECISIONS = {"fp32": Precision("cpu", None), "bf16": Precision("cpu", torch.bfloat16)}


def best_seconds(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peaks(precision: Precision, rounds: int) -> dict[str, float]:
    """GFLOP/s of a large matmul and a detector-like convolution under `precision`'s autocast."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(4, 64, 96, 96), torch.randn(64, 64, 3, 3)

    def matmul():
        with precision.autocast():
            return a @ b

    def conv():
        with precision.autocast():
            return F.conv2d(x, w, padding=1)

    conv_flops = 2 * 4 * 64 * 96 * 96 * 64 * 9
    return {"matmul": 2 * 2048 ** 3 / best_seconds(matmul, rounds) / 1e9,
            "conv": conv_flops / best_seconds(conv, rounds) / 1e9}


def counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg, model, data, optimizer, scheduler, scaler = quickstart_parts(1, [])
    images, targets = data[0]
    batch = [(images, targets)]
    inference = [(images, [{"image_id": 0, "orig_size": im.shape[-2:]} for im in images])]
    cpu = torch.device("cpu")

    def step(precision: Precision) -> Callable[[], object]:
        return lambda: train_one_epoch(model, batch, optimizer, scheduler, scaler, device=cpu, precision=precision,
                                       epoch=0, grad_clip=cfg.train.grad_clip)

    def infer(precision: Precision) -> Callable[[], object]:
        return lambda: predict(model, inference, device=cpu, precision=precision)

    def forward() -> object:
        model.train()
        return model(list(images), [{k: v for k, v in t.items()} for t in targets])

    # training = the forward in training mode, and a backward of twice its FLOPs (the usual 3x); counting the
    # step itself overstates it: torch's counter ignores `groups` in a convolution's backward, so each
    # depthwise convolution's gradient counts as a dense one (measured 80 G per image for this model)
    raw = counted(step(PRECISIONS["fp32"])) / len(images)
    flops = {"train": 3 * counted(forward) / len(images), "predict": counted(infer(PRECISIONS["fp32"])) / len(images)}
    print(f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"probe: {cpu_precision(model.backbone, cfg.data.image_size).reason}")
    print(f"FLOPs per image at {cfg.data.image_size} px: training {flops['train'] / 1e9:.1f} G (3x its training "
          f"forward; torch's counter says {raw / 1e9:.1f} G, counting depthwise gradients as dense), inference "
          f"{flops['predict'] / 1e9:.1f} G")
    for name, precision in PRECISIONS.items():
        peak = peaks(precision, args.rounds)
        roof = max(peak.values())
        print(f"\n{name}: peak matmul {peak['matmul']:.0f} GFLOP/s, conv {peak['conv']:.0f} GFLOP/s")
        for kind, fn in (("train", step(precision)), ("predict", infer(precision))):
            seconds = best_seconds(fn, args.rounds) / len(images)
            achieved = flops[kind] / seconds / 1e9
            print(f"  {kind:<8} {seconds:.3f} s per image, {achieved:.0f} GFLOP/s = {achieved / roof:.0%} of "
                  f"this machine's {name} peak")


if __name__ == "__main__":
    main()
