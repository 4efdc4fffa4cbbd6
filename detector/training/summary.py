"""A k-fold run's summary.json: each finished fold's best epoch and its metrics there, and the mean and
spread of those metrics across folds (what a trial's score is)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics import METRIC_KEYS, Metrics

SUMMARY_KEYS = (*METRIC_KEYS, "f_beta")  # what the mean and std across folds are taken of


@dataclass(frozen=True)
class FoldSummary:
    """One finished fold: its best epoch, the epochs it ran, whether it stopped early, its metrics at the
    best epoch (on the fold's own validation images) and the anchors it fitted."""

    fold: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    metrics: Metrics
    anchors: dict[str, Any] | None = None

    @property
    def capped(self) -> bool:
        """Its best epoch was the last it ran, without early stopping: still improving when it stopped."""
        return self.best_epoch == self.epochs_run - 1 and not self.stopped_early

    def to_dict(self) -> dict[str, Any]:
        return {"fold": self.fold, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "stopped_early": self.stopped_early, "metrics": self.metrics.to_dict(), "anchors": self.anchors}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FoldSummary":
        return cls(int(d["fold"]), int(d.get("best_epoch", -1)), int(d.get("epochs_run", 0)),
                   bool(d.get("stopped_early", False)), Metrics.from_dict(d.get("metrics") or {}), d.get("anchors"))

    @classmethod
    def of_fit(cls, fold: int, fit_summary: Mapping[str, Any]) -> "FoldSummary":
        """From a fold's own summary.json (training.callbacks.FitResult.summary)."""
        return cls(fold, int(fit_summary["best_epoch"]), int(fit_summary["epochs_run"]),
                   bool(fit_summary["stopped_early"]), Metrics.from_dict(fit_summary.get("best_metrics") or {}),
                   fit_summary.get("anchors"))


def across(folds: Sequence[FoldSummary]) -> tuple[Metrics, Metrics]:
    """(mean, std) of the folds' metrics, metric by metric (NaN for none); no per-class rows."""
    values = {k: [f.metrics.value(k) for f in folds] for k in SUMMARY_KEYS}
    mean = {k: float(np.mean(v)) if v else math.nan for k, v in values.items()}
    std = {k: float(np.std(v)) if v else math.nan for k, v in values.items()}
    return Metrics.from_dict(mean), Metrics.from_dict(std)
