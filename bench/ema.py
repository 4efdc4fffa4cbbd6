"""EMA of the weights vs the raw weights on RBC, at equal epochs: does train.ema help small-data fine-tuning?

Trains the same config twice on the example RBC data (train/ -> valid/), with and without `train.ema`,
every other setting (the seed included) equal, and prints mAP@0.5, F1 and the score on valid/ after each
epoch. Epoch e's numbers come from an `--epochs`-long schedule.

    python bench/ema.py                              # configs/quickstart.yaml's recipe, 3 epochs (about 6 minutes)
    python bench/ema.py --epochs 6 --set train.ema_decay=0.998
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
    histories = train_variants(args.config, args.epochs, args.overrides,
                               {"raw": ["train.ema=false"], "ema": ["train.ema=true"]})
    print_epochs(histories, ("map_50", "f1", "score"))


if __name__ == "__main__":
    main()
