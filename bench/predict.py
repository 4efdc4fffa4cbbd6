"""Ensemble inference cost: WBF fusion time as a share of 3-model inference time (target <= 5%), and
images/s of the 3-model ensemble vs a third of one model's images/s (target >= 0.95 of that).

Trains three brief models (a 2-fold run keeping its top 3) on generated sample data, then predicts the
sample images with one of them alone and with all three fused, in the same process.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from detector import config
from detector.training.cv import run_cv
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.inference.ensemble import Ensemble, fuse_wbf
from detector.inference.predict import collect_images


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/sample.yaml")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5, help="trained enough that scores spread like a real model's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample_dataset(Path(tmp) / "data", SampleSpec(images=args.images))
        cfg = config.load(args.config, [f"data.train.annotations={data['train']}",
                                        f"data.val.annotations={data['val']}", f"train.epochs={args.epochs}", "cv.folds=2",
                                        *args.overrides])
        run = Path(tmp) / "run"
        run_cv(cfg, run, progress=False, log=lambda s: None)
        top = [run / m["path"] for m in json.loads((run / "top_models.json").read_text())]
        images = collect_images([Path(data["train"]).parent / "images"])
        single, ensemble = Ensemble.from_checkpoints(top[:1]), Ensemble.from_checkpoints(top)
        single.predict(images[:8])  # warm-up
        _, t_single = timed(lambda: single.predict(images, batch_size=args.batch_size))
        fused, t_ensemble = timed(lambda: [p for p, _ in ensemble.iter_predict(
            images, batch_size=args.batch_size, with_members=True)])
        s = ensemble.settings
        _, t_fuse = timed(lambda: [fuse_wbf([m.boxes for m in p.members], [m.scores for m in p.members],
                                            [m.labels for m in p.members], width=p.width, height=p.height,
                                            iou_thr=s.iou_thr, skip_box_thr=s.skip_box_thr, conf_type=s.conf_type)
                                   for p in fused])
    n = len(images)
    boxes = sum(len(m.scores) for p in fused for m in p.members) / n
    kept = sum(int((m.scores >= s.skip_box_thr).sum()) for p in fused for m in p.members) / n
    print(f"{n} images of the sample data, batch {args.batch_size}; {boxes:.0f} member boxes per image, {kept:.0f} "
          f"of them at or above skip_box_thr {s.skip_box_thr}")
    print(f"one model: {n / t_single:.1f} images/s; ensemble of 3: {n / t_ensemble:.1f} images/s")
    print(f"ensemble throughput vs a third of one model's: {3 * t_single / t_ensemble:.3f} (target >= 0.95)")
    print(f"WBF fusion: {1000 * t_fuse / n:.2f} ms per image, {100 * t_fuse / (t_ensemble - t_fuse):.2f}% of "
          "3-model inference time (target <= 5%)")


if __name__ == "__main__":
    main()
