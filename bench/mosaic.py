"""Mosaic vs none on RBC, at equal epochs: does data.augment.mosaic help small-data fine-tuning?

Trains the same config twice on the example RBC data (train/ -> valid/), with data.augment.mosaic 0 and
0.5 (a 2x2 Albumentations Mosaic of the image and three others, drawn from the sample's (seed, epoch,
index) stream), every other setting (the seed included) equal, and prints mAP@0.5, mAP, F1 and the score
on valid/ after each epoch. Epoch e's numbers come from an `--epochs`-long schedule.

    python bench/mosaic.py                            # configs/quickstart.yaml's recipe, 3 epochs (about 8 minutes)
    python bench/mosaic.py --epochs 6 --set data.augment.mosaic=1.0
"""
from __future__ import annotations

import argparse
from pathlib import Path

from variants import print_epochs, train_variants

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    mosaic = next((o for o in args.overrides if o.startswith("data.augment.mosaic=")), "data.augment.mosaic=0.5")
    overrides = [o for o in args.overrides if o != mosaic]
    histories = train_variants(args.config, args.epochs, overrides,
                               {"none": ["data.augment.mosaic=0"], "mosaic": [mosaic]})
    print_epochs(histories, ("map_50", "map", "f1", "score"))


if __name__ == "__main__":
    main()
