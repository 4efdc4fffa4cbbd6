"""Overhead of per-epoch checkpointing (last.pt with optimizer/scheduler/RNG state, best/top-k models)
as a share of epoch time (target <= 3%).

Trains a short k-fold run of the sample recipe (configs/sample.yaml) on generated sample data and reads the
checkpoint_seconds and seconds columns that fit() logs for every epoch.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from detector import config
from detector.training.cv import run_cv
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.report import read_metric_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/sample.yaml")
    parser.add_argument("--images", type=int, default=600, help="sample images (the sample recipe's usual size)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_sample_dataset(Path(tmp) / "data", SampleSpec(images=args.images))
        cfg = config.load(args.config, [f"data.train.annotations={paths['annotations']}",
                                        f"data.val.annotations={paths['val']}", f"train.epochs={args.epochs}",
                                        "cv.folds=2", *args.overrides])
        run_cv(cfg, Path(tmp) / "run", progress=False, log=lambda s: None)
        rows = read_metric_rows(Path(tmp) / "run")
    for r in rows:
        print(f"fold {r['fold']} epoch {r['epoch']}: epoch {r['seconds']:.2f} s, checkpoints "
              f"{r['checkpoint_seconds']:.3f} s ({100 * r['checkpoint_seconds'] / r['seconds']:.2f}%)")
    share = sum(r["checkpoint_seconds"] for r in rows) / sum(r["seconds"] for r in rows)
    print(f"checkpointing share of epoch time: {100 * share:.2f}% (target <= 3%)")


if __name__ == "__main__":
    main()
