"""Fine-tuning vs training from scratch on RBC, at equal epochs: what the packaged ImageNet weights buy.

Trains the same config twice on the example RBC data (examples/rbc: train/ -> valid/), once with
`model.pretrained: packaged` and once with `model.pretrained: false`, and prints mAP@0.5 and F1 on valid/
and the seconds per epoch (training + evaluation) after each epoch. Both runs share every other setting,
the seed included. Epoch e's numbers come from an `--epochs`-long schedule, not from a run of e epochs.

    python bench/finetune.py                       # configs/rbc.yaml's recipe, 3 epochs (about 12 minutes)
    python bench/finetune.py --epochs 1 --set data.image_size=320
"""
from __future__ import annotations

import argparse
from pathlib import Path

from variants import print_epochs, train_variants

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "rbc.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    histories = train_variants(args.config, args.epochs, args.overrides,
                               {"pretrained": ["model.pretrained=packaged"], "scratch": ["model.pretrained=false"]})
    print_epochs(histories, ("map_50", "f1", "seconds"))
    last_pre, last_scratch = histories["pretrained"][-1]["map_50"], histories["scratch"][-1]["map_50"]
    print(f"after {args.epochs} epochs: pretrained mAP@0.5 {last_pre:.3f} vs scratch {last_scratch:.3f} "
          f"(difference {last_pre - last_scratch:+.3f})")


if __name__ == "__main__":
    main()
