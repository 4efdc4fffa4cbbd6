"""The folders detector writes, and the one place their file names are spelled.

A run folder (`detector train --out RUN`, and each `fold_K/` of a `cv` run)::

    RUN/
      .detector-run          marker: detector made this folder (what --force checks)
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
      top/ top_models.json   the cv.top_k best checkpoints over all folds and epochs
      heldout.json           a study trial's ensemble and members on the held-out split
      plots/                 written by `detector report`
      fold_K/                a run folder of its own

A study folder (`detector study --name NAME`, default studies/NAME)::

    STUDY/
      study.json             name and storage URL (password masked)
      config.yaml            the study's config
      study.db               the default SQLite storage
      trial_NNNN/            one cv run folder per trial
      best/                  ensemble.json, config.yaml and model_I.pt of the best trial
      plots/                 written by `detector report`

A predict output folder (`detector predict ... --out OUT`): predictions.json, predictions.csv, images.json,
drawn/ with --draw, and predictions.partial.jsonl while it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARKER = ".detector-run"
LOCK = ".detector.lock"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder (train run, cv run or one fold of it)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    marker = property(lambda self: self.root / MARKER)
    lock = property(lambda self: self.root / LOCK)
    config = property(lambda self: self.root / CONFIG)
    data = property(lambda self: self.root / "data.json")
    env = property(lambda self: self.root / "env.json")
    folds = property(lambda self: self.root / "folds.json")
    metrics = property(lambda self: self.root / "metrics.csv")
    anchors = property(lambda self: self.root / "anchors.json")
    last = property(lambda self: self.root / "last.pt")
    best = property(lambda self: self.root / "best.pt")
    best_predictions = property(lambda self: self.root / "best_predictions.json")
    summary = property(lambda self: self.root / "summary.json")
    top = property(lambda self: self.root / "top")
    top_models = property(lambda self: self.root / "top_models.json")
    heldout = property(lambda self: self.root / "heldout.json")
    plots = property(lambda self: self.root / "plots")

    def fold(self, k: int) -> "RunPaths":
        return RunPaths(self.root / f"fold_{k}")

    def fold_runs(self) -> list[tuple[int, "RunPaths"]]:
        """(K, fold_K) of the fold folders present, in fold order."""
        found = [(p.name.split("_", 1)[1], p) for p in self.root.glob("fold_*") if p.is_dir()]
        return sorted((int(k), RunPaths(p)) for k, p in found if k.isdigit())

    def top_checkpoint(self, fold: int, epoch: int) -> Path:
        return self.top / f"fold{fold}_epoch{epoch:03d}.pt"

    def checkpoints(self) -> list[Path]:
        """Every model file of the run: the top models and the folds' resume files."""
        return [*self.top.glob("*.pt"), *(f.last for _, f in self.fold_runs() if f.last.exists())]


# Everything detector writes in a run folder: what --force may delete (fold_K/ folders are run folders).
RUN_ENTRIES = tuple(getattr(RunPaths("."), name).name for name in (
    "marker", "config", "data", "env", "folds", "metrics", "anchors", "last", "best", "best_predictions",
    "summary", "top", "top_models", "heldout", "plots"))


@dataclass(frozen=True)
class StudyPaths:
    """The files of one study folder."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    meta = property(lambda self: self.root / "study.json")
    config = property(lambda self: self.root / CONFIG)
    database = property(lambda self: self.root / "study.db")
    lock = property(lambda self: self.root / ".lock")
    best = property(lambda self: self.root / "best")
    ensemble = property(lambda self: self.root / "best" / ENSEMBLE)
    plots = property(lambda self: self.root / "plots")

    def trial(self, run_dir: str) -> RunPaths:
        return RunPaths(self.root / run_dir)


ENSEMBLE = "ensemble.json"  # in a study's best/ folder: members, WBF settings, threshold, label map


def trial_folder(number: int) -> str:
    """The run folder name of a study's trial `number` (a retry keeps the failed trial's folder)."""
    return f"trial_{number:04d}"


def member_file(i: int) -> str:
    return f"model_{i}.pt"


@dataclass(frozen=True)
class PredictPaths:
    """The files of a `detector predict --out` folder."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    predictions = property(lambda self: self.root / "predictions.json")
    table = property(lambda self: self.root / "predictions.csv")
    images = property(lambda self: self.root / "images.json")
    partial = property(lambda self: self.root / "predictions.partial.jsonl")
    drawn = property(lambda self: self.root / "drawn")
