"""TensorBoard event files for a run (`train.tensorboard: true`): RUN/tensorboard/ (a fold's in its folder, a
study trial's in the trial's), so `tensorboard --logdir runs/NAME` or `--logdir studies/NAME` shows every
fold or trial side by side.

Per epoch: the losses, the learning rate and the validation metrics; when the score improves, per-class
precision-recall curves (IoU 0.5) and a few validation images drawn with their predicted boxes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .training.metric_log import LOSS_KEYS
from .metrics import METRIC_KEYS, pr_curves

SCALARS = (*LOSS_KEYS, "lr", *(k for k in METRIC_KEYS if k != "threshold"))
DRAWN_IMAGES = 4


def check_available() -> None:
    """A ConfigError with the fix when train.tensorboard is on but the package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\"; "
                          "or set train.tensorboard=false") from None


class RunBoard:
    """One run's event file; `epoch` after every epoch, `close` at the end."""

    def __init__(self, folder: Path):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def epoch(self, epoch: int, row: dict[str, Any], improved: bool, gt: dict[str, Any],
              results: list[dict[str, Any]], names: dict[int, str], images: Sequence[tuple[torch.Tensor, int]],
              score_threshold: float) -> None:
        for key in SCALARS:
            if key in row:
                group = "loss" if key.startswith("loss") else "train" if key == "lr" else "val"
                self.writer.add_scalar(f"{group}/{key}", float(row[key]), epoch)
        if improved:
            self._pr_curves(epoch, gt, results, names)
            self._drawn(epoch, images, results, names, score_threshold)
        self.writer.flush()

    def _pr_curves(self, epoch: int, gt, results, names) -> None:
        from .plots import pr_figure

        curves = {names.get(cid, str(cid)): curve for cid, curve in pr_curves(gt, results).items()}
        if curves:
            self.writer.add_figure("val/pr_curves", pr_figure(curves, f"epoch {epoch}, IoU 0.5"), epoch)

    def _drawn(self, epoch: int, images, results, names, score_threshold: float) -> None:
        for i, (image, image_id) in enumerate(images[:DRAWN_IMAGES]):
            mine = [r for r in results if r["image_id"] == image_id and r["score"] >= score_threshold]
            h, w = image.shape[-2:]
            boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in mine)],
                             np.float32).reshape(-1, 4)
            labels = [f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}" for r in mine]
            self.writer.add_image_with_boxes(f"val/image_{i}", image, torch.from_numpy(boxes), epoch,
                                             labels=labels or None)

    def close(self) -> None:
        self.writer.close()
