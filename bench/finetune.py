"""Fine-tuning vs training from scratch on RBC, at equal epochs: what the packaged ImageNet weights buy.

Trains the same config twice on the example RBC data (examples/rbc: train/ -> valid/), once with
`model.pretrained: packaged` and once with `model.pretrained: false`, and prints mAP@0.5 and F1 on valid/
after each epoch and the seconds per epoch (training + evaluation). Both runs share every other setting,
the seed included. Epoch e's numbers come from an `--epochs`-long schedule, not from a run of e epochs.

    python bench/finetune.py                       # configs/rbc.yaml's recipe, 3 epochs (about 12 minutes)
    python bench/finetune.py --epochs 1 --set data.image_size=320
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
    parser.add_argument("--config", default=str(ROOT / "configs" / "rbc.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pretrained in (("pretrained", "packaged"), ("scratch", "false")):
            cfg = config.load(args.config, [f"train.epochs={args.epochs}", "train.patience=0", *args.overrides,
                                            f"model.pretrained={pretrained}"])
            train_index, val_index = load_splits(cfg)
            print(f"{name}: {cfg.model.backbone}, {len(train_index.images)} training images at "
                  f"{cfg.data.image_size} px, {args.epochs} epochs", flush=True)
            result = fit(cfg, train_index, val_index, Path(tmp) / name, progress=False,
                         log=lambda s: print("  " + s, flush=True))
            rows[name] = result.history

    print(f"\n{'epoch':>5}  {'pretrained map_50':>17}  {'scratch map_50':>14}  {'pretrained f1':>13}  "
          f"{'scratch f1':>10}  {'s/epoch (pre, scratch)':>22}")
    for pre, scratch in zip(rows["pretrained"], rows["scratch"]):
        print(f"{pre['epoch'] + 1:>5}  {pre['map_50']:>17.3f}  {scratch['map_50']:>14.3f}  {pre['f1']:>13.3f}  "
              f"{scratch['f1']:>10.3f}  {pre['seconds']:>10.1f} {scratch['seconds']:>10.1f}")
    last_pre, last_scratch = rows["pretrained"][-1]["map_50"], rows["scratch"][-1]["map_50"]
    print(f"after {args.epochs} epochs: pretrained mAP@0.5 {last_pre:.3f} vs scratch {last_scratch:.3f} "
          f"(difference {last_pre - last_scratch:+.3f})")


if __name__ == "__main__":
    main()
