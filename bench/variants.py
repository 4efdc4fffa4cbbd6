"""Shared by the benches that train one config as several variants at equal epochs (finetune.py, ema.py)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from detector import config
from detector.data.splits import load_splits
from detector.training.fit import fit


def train_variants(config_path: str, epochs: int, overrides: list[str],
                   variants: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per variant name, the epoch history of `fit` on the config's train -> val split, the variant's
    overrides applied last; every other setting, the seed included, is the same."""
    histories = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in variants.items():
            cfg = config.load(config_path, [f"train.epochs={epochs}", "train.patience=0", *overrides, *extra])
            train_index, val_index = load_splits(cfg)
            print(f"{name}: {cfg.model.backbone}, {len(train_index.images)} training images at "
                  f"{cfg.data.image_size} px, {epochs} epochs", flush=True)
            histories[name] = fit(cfg, train_index, val_index, Path(tmp) / name, progress=False,
                                  log=lambda s: print("  " + s, flush=True)).history
    return histories


def print_epochs(histories: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> None:
    """One row per epoch: each key for each variant, side by side."""
    names = list(histories)
    header = ["epoch"] + [f"{n} {k}" for k in keys for n in names]
    print("\n" + "  ".join(f"{h:>12}" for h in header))
    for rows in zip(*histories.values()):
        cells = [str(rows[0]["epoch"] + 1)] + [f"{row[k]:.4f}" for k in keys for row in rows]
        print("  ".join(f"{c:>12}" for c in cells))
