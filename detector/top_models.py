"""A run's kept models: `top_models.json` (`TopEntry` rows), the k best checkpoints of each fold (`TopK`),
and the index read back, or rebuilt from the checkpoints when it was lost (`read_index`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .checkpoint import load_checkpoint
from .errors import DetectorError, WeightsError
from .files import read_json, write_json
from .layout import RunPaths
from .metrics import Metrics


@dataclass(frozen=True)
class TopEntry:
    """One published or kept model, as top_models.json lists it: its file (relative to the run), the fold it
    was trained on (None: all of data.train, a refit member), its epoch, its validation score and metrics;
    a refit member also has its name, where its config came from and how many images trained it."""

    path: str
    fold: int | None
    epoch: int
    score: float
    metrics: Metrics | None = None
    member: str | None = None
    source: str | None = None
    train_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"fold": self.fold, "epoch": self.epoch, "score": self.score, "path": self.path,
             "metrics": self.metrics.to_dict() if self.metrics else {}}
        return {**d, **{k: getattr(self, k) for k in ("member", "source", "train_images") if getattr(self, k) is not None}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TopEntry":
        return cls(d["path"], d.get("fold"), int(d.get("epoch", -1)), float(d.get("score", math.nan)),
                   Metrics.from_dict(d["metrics"]) if d.get("metrics") else None, d.get("member"), d.get("source"), d.get("train_images"))


class TopK:
    """The k best checkpoints of each fold by score, listed in `top_models.json`.

    Scores are ranked within a fold only: two folds' scores are measured on different images, so they are
    not compared. A better model replaces the fold's worst; files that fall out are deleted at once.
    Ranking: higher score first, then lower epoch; a NaN score never enters. Offering a (fold, epoch) again
    (a resumed epoch) replaces its entry. The list is in fold order.
    """

    def __init__(self, run_dir: str | Path, k: int, log: Callable[[str], None] = print):
        self.run, self.k = Path(run_dir), k
        self.paths = RunPaths(run_dir)
        self.folder = self.paths.top
        self.index = self.paths.top_models
        self.entries, rebuilt = read_index(self.paths)
        if rebuilt:  # nothing an unreadable index pointed to is deleted: what top/ holds is listed again
            write_json(self.index, [e.to_dict() for e in self.entries])
            log(f"{self.index}: rebuilt from the {len(self.entries)} checkpoint(s) in {self.folder}")
        else:
            self._remove_unlisted()

    def offer(self, fold: int, epoch: int, metrics: Metrics, save: Callable[[Path], Any]) -> bool:
        score = float(metrics.score)
        if not math.isfinite(score):
            return False
        path = self.paths.top_checkpoint(fold, epoch)
        candidate = TopEntry(str(path.relative_to(self.run)), fold, epoch, score, metrics.overall())
        others = [e for e in self.entries if (e.fold, e.epoch) != (fold, epoch)]
        kept = sorted([e for e in others if e.fold == fold] + [candidate], key=_rank)[: self.k]
        if candidate not in kept:
            return False
        save(path)
        self.entries = sorted([e for e in others if e.fold != fold] + kept, key=_order)
        write_json(self.index, [e.to_dict() for e in self.entries])
        self._remove_unlisted()
        return True

    def _remove_unlisted(self) -> None:
        listed = {self.run / e.path for e in self.entries}
        for f in self.folder.glob("*.pt") if self.folder.exists() else []:
            if f not in listed:
                f.unlink()


def _rank(entry: TopEntry) -> tuple[float, int]:
    return (-entry.score, entry.epoch)


def _order(entry: TopEntry) -> tuple[int, float, int]:
    return (entry.fold if entry.fold is not None else -1, *_rank(entry))


def read_index(paths: RunPaths) -> tuple[list[TopEntry], bool]:
    """A run's top_models.json entries, and whether they were rebuilt: an index that is unreadable, or
    missing while checkpoints it would list exist (a kill between a save and the index write), is rebuilt
    from the checkpoints themselves (top/*.pt and refit/*/model.pt each hold their epoch and metrics)."""
    if paths.top_models.exists():
        try:
            return [TopEntry.from_dict(d) for d in read_json(paths.top_models)], False
        except DetectorError:
            pass
    top = [_entry(paths, path, fold=fold) for fold, _, path in paths.top_checkpoints()]
    refit = [_entry(paths, p, member=p.parent.name) for p in sorted(paths.refit.glob(f"*/{paths.model.name}"))]
    entries = sorted((e for e in top if e is not None), key=_order) + [e for e in refit if e is not None]
    return entries, paths.top_models.exists() or bool(entries)


def _entry(paths: RunPaths, path: Path, fold: int | None = None, member: str | None = None) -> TopEntry | None:
    try:
        state = load_checkpoint(path)
    except WeightsError:
        return None  # a file that cannot be read is not listed, and not deleted either
    metrics = Metrics.from_dict(state.metrics).overall()
    relative = str(path.relative_to(paths.root))
    return TopEntry(relative, fold, int(state.epoch), metrics.score, metrics, member,
                    None if member is None else f"rebuilt from {relative}")
