"""bf16 autocast against fp32 on this machine's CPU: speed, then accuracy at equal epochs.

Speed: the main job's model (configs/quickstart.yaml: tf_efficientnet_lite0, 64-channel FPN) on RBC
training batches of 4 at its image size; one training step (engine.train_one_epoch) and one inference
batch per precision, alternating over rounds, best round of each. Accuracy: `detector train
configs/finetune.yaml` with train.amp=fp32 and train.amp=bf16, the same epochs and image size, several seeds,
on RBC (microscopy) and on the cards photos (../shared/datasets/cards, converted as bench/versus_plain.py
does); test mAP@0.5 and mAP of each, and the bf16 - fp32 difference beside the seed-to-seed spread.
`train.amp: auto` picks bf16 on a CPU only where it is native and faster (detector/hardware.py).

    python bench/precision.py --skip-accuracy        # speed only, about 2 minutes
    python bench/precision.py --seeds 2              # and accuracy: about 40 minutes on 2 AVX-512 bf16 cores
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from versus_plain import CLI, ROOT, cards, evaluate, predict, rbc, run, sets  # noqa: E402

from detector import config  # noqa: E402
from detector.data.dataset import CocoDetection, collate  # noqa: E402
from detector.data.sampling import box_shapes  # noqa: E402
from detector.data.splits import load_splits  # noqa: E402
from detector.data.transforms import build_train_transforms  # noqa: E402
from detector.engine import predict as predict_batches, train_one_epoch  # noqa: E402
from detector.hardware import Precision  # noqa: E402
from detector.hardware import cpu_precision  # noqa: E402
from detector.models.faster_rcnn import build  # noqa: E402
from detector.optim import LrSchedule  # noqa: E402

PRECISIONS = {"fp32": Precision("cpu", None), "bf16": Precision("cpu", torch.bfloat16)}


def quickstart_parts(batches: int, overrides: list[str]):
    """The main job's model (configs/quickstart.yaml), `batches` RBC training batches of 4 at its size, and
    what a training step needs: (cfg, model, batches, optimizer, scheduler, scaler). bench/roofline.py too."""
    cfg = config.load(ROOT / "configs" / "quickstart.yaml", ["train.batch_size=4", *overrides])
    train_index, _ = load_splits(cfg, log=lambda s: None)
    ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, cfg.data.image_size), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    data = [b for _, b in zip(range(batches), loader)]
    model, _ = build(cfg.model, num_classes=train_index.label_map.num_classes, image_size=cfg.data.image_size,
                     box_shapes=box_shapes(train_index, cfg.data.image_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule("cosine", 10_000, 0))
    return cfg, model, data, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def speed(batches: int, rounds: int, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Seconds per training step and per inference batch, per precision (best of `rounds`)."""
    cfg, model, data, optimizer, scheduler, scaler = quickstart_parts(batches, overrides)
    print(f"{cfg.model.backbone} at {cfg.data.image_size} px, bf16 probe: "
          f"{cpu_precision(model.backbone, cfg.data.image_size).reason}")
    inference = [(images, [{"image_id": 0, "orig_size": im.shape[-2:]} for im in images]) for images, _ in data]
    times: dict[str, dict[str, list[float]]] = {p: {"train": [], "predict": []} for p in PRECISIONS}
    for _ in range(rounds + 1):  # the first round warms up (oneDNN's kernel cache) and is not counted
        for name, precision in PRECISIONS.items():
            start = time.perf_counter()
            train_one_epoch(model, data, optimizer, scheduler, scaler, device=torch.device("cpu"),
                            precision=precision, epoch=0, grad_clip=cfg.train.grad_clip)
            times[name]["train"].append((time.perf_counter() - start) / len(data))
            start = time.perf_counter()
            predict_batches(model, inference, device=torch.device("cpu"), precision=precision)
            times[name]["predict"].append((time.perf_counter() - start) / len(data))
    return {p: {k: min(v[1:]) for k, v in t.items()} for p, t in times.items()}


def accuracy(split, tmp: Path, seeds: int, epochs: int, size: int) -> dict[str, list[dict]]:
    """Test scores of `detector train` per precision and seed, with its training seconds."""
    out: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    for seed in range(seeds):
        for name in PRECISIONS:
            folder = tmp / f"{name}_{seed}"
            seconds = run([*CLI, "train", str(ROOT / "configs" / "finetune.yaml"), "--out", str(folder), "--quiet",
                           *sets([*split.data()[:4], f"train.epochs={epochs}", f"data.image_size={size}",
                                  f"train.seed={seed}", f"train.amp={name}"])])
            preds, _ = predict(folder / "best.pt", split, tmp / f"{name}_{seed}_preds")
            scored = evaluate(split, preds, [])
            out[name].append({"seed": seed, "seconds": seconds, "map_50": scored["map_50"], "map": scored["map"]})
            print(f"  {split.name} {name} seed {seed}: mAP@0.5 {scored['map_50']:.3f} mAP {scored['map']:.3f} "
                  f"({seconds:.0f} s)", flush=True)
    return out


def print_accuracy(name: str, rows: dict[str, list[dict]]) -> None:
    print(f"\n{name}: test scores at equal epochs (mean over seeds, [min, max])")
    for key in ("map_50", "map", "seconds"):
        cells = []
        for p, runs in rows.items():
            v = [r[key] for r in runs]
            cells.append(f"{p} {statistics.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
        print(f"  {key:<8} " + "   ".join(cells))
    for key in ("map_50", "map"):
        diffs = [b[key] - f[key] for f, b in zip(rows["fp32"], rows["bf16"])]
        spread = max(abs(a[key] - b[key]) for p in rows for a in rows[p] for b in rows[p])
        print(f"  {key}: bf16 - fp32 per seed {', '.join(f'{d:+.3f}' for d in diffs)}; "
              f"seed-to-seed spread within one precision up to {spread:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides of the speed part, e.g. model.backbone=resnet50_fpn")
    parser.add_argument("--dataset", choices=("rbc", "cards", "both"), default="both")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx2") if f in cpu]
    print(f"CPU {model} ({', '.join(flags)}), {torch.get_num_threads()} threads")
    t = speed(args.batches, args.rounds, args.set)
    for kind in ("train", "predict"):
        print(f"{kind:<8} s per batch of 4: fp32 {t['fp32'][kind]:.2f}, bf16 {t['bf16'][kind]:.2f}, "
              f"bf16 / fp32 {t['bf16'][kind] / t['fp32'][kind]:.2f}")
    if args.skip_accuracy:
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in (("rbc", "cards") if args.dataset == "both" else (args.dataset,)):
            (tmp / name).mkdir()
            split = rbc() if name == "rbc" else cards(tmp / name)
            print_accuracy(split.name, accuracy(split, tmp / name, args.seeds, args.epochs, args.size))


if __name__ == "__main__":
    main()
