"""The objective: one trial is a k-fold run of the trial's config, pruned and scored on its fold-mean score.

Every trial uses the same folds (cv.seed), so the fold-mean scores of two trials are measured on the same
images and can be ranked. The trial publishes nothing: after the study, its best config is refit on all of
data.train (search/best.py), and data.val tunes the published ensemble.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from .. import config as config_mod
from .. import distributed
from ..training.callbacks import CONTROL, Callback, FitState
from ..config import Config
from ..training.cv import run_cv
from ..hardware import resolve_device
from ..layout import RunPaths, trial_folder
from ..metrics import Metrics
from ..training.metric_log import read_metric_rows
from ..data.splits import load_splits
from .latency import LatencyProbe, timing_images
from .space import suggest
from .artifacts import Artifacts
from .mirror import FolderMirror, TrialUpload, index_from, index_to, restore
from .trial_record import BEST_EPOCHS, CV_MEAN, CV_STD, FOLD_EPOCHS, LATENCY_MS, RUN_DIR, UPLOADED
from ..tracking import StudyTracking, ended_status


class Objective:
    """One trial: suggest -> k-fold run (pruned on the fold-mean score) -> its fold-mean score."""

    def __init__(self, cfg: Config, study_dir: str | Path, *, progress: bool = False,
                 log: Callable[[str], None] = print, tracking: StudyTracking | None = None,
                 artifacts: Artifacts | None = None):
        self.cfg, self.study_dir, self.progress, self.log = cfg, Path(study_dir), progress, log
        self.tracking = tracking  # MLflow: each trial a run, its folds nested
        self.artifacts = artifacts  # each trial's folder kept there as it trains, so any machine can resume it
        self.train_index, self.held_out = load_splits(cfg, log)
        self.timed: list | None = None  # the data.val images latency is timed on, decoded once

    @property
    def two_objectives(self) -> bool:
        return "latency" in self.cfg.search.objectives

    def __call__(self, trial: optuna.trial.BaseTrial) -> float | tuple[float, float]:
        params = suggest(trial, self.cfg.search.space)
        trial_cfg = config_mod.with_values(self.cfg, params, source=f"trial {trial.number} parameters")
        run = self.study_dir / trial.user_attrs.get(RUN_DIR, trial_folder(trial.number))
        trial.set_user_attr(RUN_DIR, run.name)
        self.log(f"trial {trial.number}: {_format_params(params)} -> {run}")
        if self.two_objectives:  # Optuna cannot prune a study of two objectives
            if self.timed is None:
                self.timed = timing_images(self.held_out, self.cfg)
            hooks = [LatencyProbe(trial_cfg, self.timed, resolve_device(trial_cfg.train.device))]
        else:
            hooks = [PruningHook(trial, run, trial_cfg.train.epochs)]
        tracked = self.tracking.trial(run.name, params) if self.tracking else None
        upload = self._upload(trial, run) if self.artifacts else None
        try:
            values = self._run(trial, trial_cfg, run, hooks + ([tracked.fits] if tracked else []) +
                               ([upload] if upload else []))
        except BaseException as e:
            if tracked:
                tracked.stopped(ended_status(e, optuna.TrialPruned))
            if upload and isinstance(e, optuna.TrialPruned):
                upload.flush()  # its freed models leave the store too
            raise
        if upload:
            upload.flush()  # the last fold's summary; its last.pt, deleted, leaves the store
        if tracked:
            tracked.finished({"value": values[0], **({"latency_ms": values[1]} if len(values) > 1 else {}),
                              **{f"cv_mean_{k}": v for k, v in trial.user_attrs[CV_MEAN].items()}})
        return values[0] if len(values) == 1 else values

    def _run(self, trial: optuna.trial.BaseTrial, trial_cfg: Config, run: Path, hooks: list) -> tuple[float, ...]:
        """The trial's k-fold run: (fold-mean score,) or (score, latency ms) with two objectives."""
        try:
            cv = run_cv(trial_cfg, run, callbacks=hooks, index=self.train_index, refit=False,
                        progress=self.progress, log=lambda s: self.log(f"trial {trial.number}: {s}"))
        except optuna.TrialPruned:
            if distributed.world().main:
                free_checkpoints(run)
            raise
        trial.set_user_attr(CV_MEAN, cv.mean.summary())
        trial.set_user_attr(CV_STD, cv.std.summary())
        trial.set_user_attr(BEST_EPOCHS, [f.best_epoch for f in cv.folds])
        trial.set_user_attr(FOLD_EPOCHS, [{"best_epoch": f.best_epoch, "epochs_run": f.epochs_run,
                                           "stopped_early": f.stopped_early} for f in cv.folds])
        if not self.two_objectives:
            return (float(cv.mean.score),)
        latency = hooks[0].measured(self.train_index, distributed.world().main)
        trial.set_user_attr(LATENCY_MS, latency)
        return float(cv.mean.score), latency


    def _upload(self, trial: optuna.trial.BaseTrial, run: Path) -> TrialUpload:
        """The trial's folder as the artifact store last had it (a retry on another machine continues from
        there), and the callback that keeps the store up to date as its folds train."""
        index = index_from(trial.user_attrs.get(UPLOADED))
        fetched = restore(self.artifacts, run, index)
        if fetched:
            self.log(f"trial {trial.number}: {len(fetched)} file(s) of {run.name} fetched from the artifact store "
                     f"({', '.join(n for n in fetched if n.endswith('.pt')) or 'no model'}); it continues from them")
        mirror = FolderMirror(self.artifacts, run, f"{self.study_dir.name}/{run.name}", index)
        return TrialUpload(mirror, lambda new: trial.set_user_attr(UPLOADED, index_to(new)))


class PruningHook(Callback):
    """A callback of every fold's fit: reports the running fold-mean score and raises TrialPruned when told to.

    At fold k, epoch e the value is the mean score at epoch e over folds 0..k, reported at step
    k * epochs + e, so every trial's value at a step averages the same folds and epoch.
    """

    stage = CONTROL

    def __init__(self, trial: optuna.trial.BaseTrial, run: Path, epochs: int):
        self.trial, self.run, self.epochs = trial, run, epochs
        self.scores: dict[tuple[int, int], float] = {}

    def on_epoch_end(self, state: FitState) -> None:
        self.report(state.fold, state.epoch, state.metrics)

    def report(self, fold: int, epoch: int, metrics: Metrics) -> None:
        if not any(f < fold for f, _ in self.scores):
            for row in read_metric_rows(self.run):  # folds finished before a resume
                if row.get("fold", fold) < fold:
                    self.scores[(int(row["fold"]), int(row["epoch"]))] = float(row["score"])
        self.scores[(fold, epoch)] = float(metrics.score)
        values = [self.scores[(f, epoch)] for f in range(fold + 1) if (f, epoch) in self.scores]
        value = float(sum(values) / len(values))
        if not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a retried trial inherits the steps it reported before the kill
            warnings.filterwarnings("ignore", message=".*already reported")
            self.trial.report(value, fold * self.epochs + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch}: fold-mean score {value:.4f}")


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def free_checkpoints(run: Path) -> None:
    """Delete a trial's model files (top models and fold resume files); logs and summaries stay."""
    for path in RunPaths(run).checkpoints():
        path.unlink(missing_ok=True)
