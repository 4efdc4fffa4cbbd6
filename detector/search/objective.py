"""The objective: one trial is a k-fold run (pruned on its fold-mean score) scored by the WBF ensemble of its
top models on the held-out split."""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from .. import config as config_mod
from .. import distributed
from ..config import Config
from ..cv import run_cv
from ..data.coco import CocoIndex
from ..evaluate import check_held_out, evaluate_held_out
from ..files import write_json
from ..layout import RunPaths, trial_folder
from ..metrics import METRIC_KEYS
from ..metric_log import read_metric_rows
from ..train import load_splits
from .space import suggest


class Objective:
    """One trial: suggest -> k-fold run (pruned on the fold-mean score) -> WBF ensemble on held-out data."""

    def __init__(self, cfg: Config, study_dir: str | Path, *, train_index: CocoIndex | None = None,
                 held_out: CocoIndex | None = None, progress: bool = False, log: Callable[[str], None] = print):
        self.cfg, self.study_dir, self.progress, self.log = cfg, Path(study_dir), progress, log
        if train_index is None or held_out is None:
            train_index, held_out = load_splits(cfg)
        check_held_out(train_index, held_out)
        self.train_index, self.held_out = train_index, held_out

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        params = suggest(trial, self.cfg.search.space)
        trial_cfg = config_mod.with_values(self.cfg, params, source=f"trial {trial.number} parameters")
        run = self.study_dir / trial.user_attrs.get("run_dir", trial_folder(trial.number))
        trial.set_user_attr("run_dir", run.name)
        self.log(f"trial {trial.number}: {_format_params(params)} -> {run}")
        hook = PruningHook(trial, run, trial_cfg.train.epochs)
        try:
            cv = run_cv(trial_cfg, run, on_epoch_end=hook, index=self.train_index, progress=self.progress,
                        log=lambda s: self.log(f"trial {trial.number}: {s}"))
        except optuna.TrialPruned:
            if distributed.world().main:
                free_checkpoints(run)
            raise
        trial.set_user_attr("cv_mean", {k: cv.mean[k] for k in METRIC_KEYS})
        started = time.perf_counter()
        result = evaluate_held_out(trial_cfg, run, cv.top_models, self.held_out)
        trial.set_user_attr("heldout_seconds", round(time.perf_counter() - started, 3))
        paths = RunPaths(run)
        if distributed.world().main:
            write_json(paths.heldout_predictions, [{"image_id": i, **p.to_dict()} for p, i in
                                                   zip(result.predictions.predictions, result.predictions.image_ids)],
                       indent=None)
            write_json(paths.heldout, result.to_dict())
        point = result.operating_point
        self.log(f"trial {trial.number}: operating point from {point.evaluations} settings in {point.seconds:.1f}s: "
                 f"{_describe(point)}; score {point.score:.4f} (configured {point.configured_score:.4f})")
        trial.set_user_attr("ensemble", _plain_metrics(result.ensemble))
        trial.set_user_attr("operating_point", point.to_dict())
        trial.set_user_attr("members", [{**m, "metrics": _plain_metrics(m["metrics"])} for m in result.members])
        return float(point.score)


class PruningHook:
    """on_epoch_end for run_cv: reports the running fold-mean score and raises TrialPruned when told to.

    At fold k, epoch e the value is the mean score at epoch e over folds 0..k, reported at step
    k * epochs + e, so every trial's value at a step averages the same folds and epoch.
    """

    def __init__(self, trial: optuna.trial.BaseTrial, run: Path, epochs: int):
        self.trial, self.run, self.epochs = trial, run, epochs
        self.scores: dict[tuple[int, int], float] = {}

    def __call__(self, fold: int, epoch: int, metrics: dict[str, Any]) -> None:
        if not any(f < fold for f, _ in self.scores):
            for row in read_metric_rows(self.run):  # folds finished before a resume
                if row.get("fold", fold) < fold:
                    self.scores[(int(row["fold"]), int(row["epoch"]))] = float(row["score"])
        self.scores[(fold, epoch)] = float(metrics["score"])
        values = [self.scores[(f, epoch)] for f in range(fold + 1) if (f, epoch) in self.scores]
        value = float(sum(values) / len(values))
        if not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a retried trial inherits the steps it reported before the kill
            warnings.filterwarnings("ignore", message=".*already reported")
            self.trial.report(value, fold * self.epochs + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch}: fold-mean score {value:.4f}")


def _plain_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(m[k]) for k in METRIC_KEYS if k in m}


def _describe(point) -> str:
    e = point.ensemble
    per_class = f" (+{len(point.thresholds.per_class)} per class)" if point.thresholds.per_class else ""
    return (f"threshold {point.thresholds.default:.3f}{per_class}, WBF {e.conf_type} iou {e.iou_thr} skip "
            f"{e.skip_box_thr} weights {e.weights or 'equal'}")


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def free_checkpoints(run: Path) -> None:
    """Delete a trial's model files (top models and fold resume files); logs and summaries stay."""
    for path in RunPaths(run).checkpoints():
        path.unlink(missing_ok=True)
