"""EMA of the weights vs the raw weights on RBC, at equal epochs: does train.ema help small-data fine-tuning?

Trains the same config twice on the example RBC data (train/ -> valid/), with and without `train.ema`,
every other setting (the seed included) equal, and prints mAP@0.5, F1 and the score on valid/ after each
epoch. Epoch e's numbers come from an `--epochs`-long schedule.

    python bench/ema.py                              # configs/quickstart.yaml's recipe, 3 epochs (about 6 minutes)
    python bench/ema.py --epochs 6 --set train.ema_decay=0.998
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from detector import config
from detector.train import fit, load_splits

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    histories = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ema in (("raw", "false"), ("ema", "true")):
            cfg = config.load(args.config, [f"train.epochs={args.epochs}", "train.patience=0", *args.overrides,
                                            f"train.ema={ema}"])
            train_index, val_index = load_splits(cfg)
            histories[name] = fit(cfg, train_index, val_index, Path(tmp) / name, progress=False,
                                  log=lambda s: None).history
            print(f"{name}: done", flush=True)
    print(f"\n{'epoch':>5}  {'raw map_50':>10} {'ema map_50':>10}  {'raw f1':>7} {'ema f1':>7}  {'raw score':>9} "
          f"{'ema score':>9}")
    for raw, ema in zip(histories["raw"], histories["ema"]):
        print(f"{raw['epoch'] + 1:>5}  {raw['map_50']:>10.4f} {ema['map_50']:>10.4f}  {raw['f1']:>7.4f} "
              f"{ema['f1']:>7.4f}  {raw['score']:>9.4f} {ema['score']:>9.4f}")


if __name__ == "__main__":
    main()
