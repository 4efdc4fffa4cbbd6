"""The folders detector writes, and the one place their file names are spelled.

A run folder (`detector train --out RUN`, and each `fold_K/` of a `cv` run)::

    RUN/
      .detector-run          marker: detector made this folder, and the entries it writes (what --force deletes)
      .detector.lock         held while a process works here
      config.yaml            the resolved config the run trains with
      data.json              sha256 of the annotation files (a changed dataset is refused on resume)
      env.json               versions, device and git commit (cv runs)
      folds.json             validation image ids per fold (cv runs, written before training)
      metrics.csv            one row per epoch (a `fold` column in cv runs)
      anchors.json           the k-means anchor fit
      last.pt                resume state (deleted when a fold finishes)
      best.pt                best epoch's model (train runs)
      best_predictions.json  the best epoch's validation predictions (COCO results)
      summary.json           best epoch and metrics; in a cv run: per fold, mean and std
      top/ top_models.json   the published models: refit/*/model.pt, or (refit.strategy folds) the cv.top_k
                             best checkpoints of each fold in top/
      refit/NAME/            a run folder per published member, trained on all of data.train (cv runs)
      model.pt               a refit member's model: its last epoch
      operating_point.json   a cv run's operating point: tuned on data.val for its refit members, or (refit.strategy
                             folds) thresholds chosen on its out-of-fold predictions
      heldout.json           a cv run's (or study's best/) members and ensemble on data.val, with the operating point
      heldout_predictions.json  each member's raw predictions on data.val (for tuning)
      plots/                 written by `detector report` (worst/: the published ensemble's worst data.val images)
      label_issues.json      `detector audit-labels`: suspected label errors, label_fixes.coco.json (the
      label_issues/          training file with the fixes applied) and drawings of the first ones
      fold_K/                a run folder of its own

A study folder (`detector study --name NAME`, default studies/NAME)::

    STUDY/
      study.json             name and storage URL (password masked)
      config.yaml            the study's config
      study.db               the default SQLite storage
      trial_NNNN/            one cv run folder per trial
      refit/NAME/            a run folder per published member, trained on all of data.train
      best/                  the published ensemble: ensemble.json, config.yaml, model_I.pt, heldout.json (its
                             members and ensemble on data.val), heldout_predictions.json; test.json
      plots/                 written by `detector report` (worst/: the published ensemble's worst data.val images)

A predict output folder (`detector predict ... --out OUT`): predictions.json, predictions.csv, images.json,
drawn/ with --draw, job.json (the job that wrote them: models, settings, images) and
predictions.partial.jsonl while it runs; with --gt also confusion.json and .png, errors.json (the error
breakdown) and worst/ (the images with the most errors, ground truth beside the predictions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MARKER = ".detector-run"
LOCK = ".detector.lock"
CONFIG = "config.yaml"
ENSEMBLE = "ensemble.json"  # in a study's best/ folder: members, WBF settings, threshold, label map

# attribute -> name below the folder. RUN_FILES except the lock is everything detector writes in a run
# folder, so it is what --force may delete (fold_K/ folders are run folders of their own).
RUN_FILES = {
    "marker": MARKER, "lock": LOCK, "config": CONFIG, "data": "data.json", "env": "env.json",
    "folds": "folds.json", "metrics": "metrics.csv", "anchors": "anchors.json", "last": "last.pt",
    "best": "best.pt", "best_predictions": "best_predictions.json", "summary": "summary.json", "top": "top",
    "top_models": "top_models.json", "heldout": "heldout.json", "heldout_predictions": "heldout_predictions.json",
    "operating_point": "operating_point.json", "plots": "plots", "tensorboard": "tensorboard",
    "augment": "augment.json", "refit": "refit", "model": "model.pt",
    "label_issues": "label_issues.json", "label_fixes": "label_fixes.coco.json", "label_drawings": "label_issues",
    "label_audit": "label_audit.json",
}
RUN_ENTRIES = tuple(name for attr, name in RUN_FILES.items() if attr != "lock")
STUDY_FILES = {"meta": "study.json", "config": CONFIG, "database": "study.db", "lock": ".lock", "best": "best",
               "refit": "refit", "publish_lock": ".publish.lock",
               "ensemble": f"best/{ENSEMBLE}", "test": "best/test.json", "heldout": "best/heldout.json",
               "heldout_predictions": "best/heldout_predictions.json",
               "plots": "plots"}
PREDICT_FILES = {"predictions": "predictions.json", "table": "predictions.csv", "images": "images.json",
                 "partial": "predictions.partial.jsonl", "drawn": "drawn", "job": "job.json",
                 "confusion": "confusion.json", "confusion_plot": "confusion.png", "errors": "errors.json",
                 "worst": "worst"}


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))


def _files(names: dict[str, str]):
    """Class decorator: a read-only Path attribute root / NAME for each (attribute, NAME) of `names`."""
    def add(cls: type) -> type:
        for attr, name in names.items():
            setattr(cls, attr, property(lambda self, name=name: self.root / name))
        return cls
    return add


@_files(RUN_FILES)
class RunPaths(_Folder):
    """The files of one run folder (train run, cv run or one fold of it): an attribute per RUN_FILES entry."""

    def fold(self, k: int) -> "RunPaths":
        return RunPaths(self.root / f"fold_{k}")

    def fold_runs(self) -> list[tuple[int, "RunPaths"]]:
        """(K, fold_K) of the fold folders present, in fold order."""
        found = [(p.name.split("_", 1)[1], p) for p in self.root.glob("fold_*") if p.is_dir()]
        return sorted((int(k), RunPaths(p)) for k, p in found if k.isdigit())

    def top_checkpoint(self, fold: int, epoch: int) -> Path:
        return self.top / f"fold{fold}_epoch{epoch:03d}.pt"

    def top_checkpoints(self) -> list[tuple[int, int, Path]]:
        """(fold, epoch, path) of the checkpoints present in top/, in fold and epoch order."""
        found = [(_TOP.match(p.name), p) for p in self.top.glob("*.pt")] if self.top.is_dir() else []
        return sorted((int(m["fold"]), int(m["epoch"]), p) for m, p in found if m)

    def checkpoints(self) -> list[Path]:
        """Every model file of the run: the top models and the folds' resume files."""
        return [*self.top.glob("*.pt"), *(f.last for _, f in self.fold_runs() if f.last.exists())]


@_files(STUDY_FILES)
class StudyPaths(_Folder):
    """The files of one study folder: an attribute per STUDY_FILES entry."""

    def trial(self, run_dir: str) -> RunPaths:
        return RunPaths(self.root / run_dir)


_TOP = re.compile(r"^fold(?P<fold>\d+)_epoch(?P<epoch>\d{3,})\.pt$")


def is_top_checkpoint(name: str) -> bool:
    """Whether `name` is a file name RunPaths.top_checkpoint makes."""
    return _TOP.match(name) is not None


def trial_folder(number: int) -> str:
    """The run folder name of a study's trial `number` (a retry keeps the failed trial's folder)."""
    return f"trial_{number:04d}"


def member_file(i: int) -> str:
    return f"model_{i}.pt"


@_files(PREDICT_FILES)
class PredictPaths(_Folder):
    """The files of a `detector predict --out` folder: an attribute per PREDICT_FILES entry."""
