"""Refitting: the models a cv run or a study publishes, trained on all of data.train.

The folds only estimate a config's score and choose its epochs (`fold_epochs`); each published member is
then a `fit` of one config on the whole training split for that many epochs, its last epoch kept
(`RUN/refit/NAME/model.pt`). data.val is evaluated every epoch for the log only, never to pick an epoch:
it tunes the published ensemble's operating point afterwards. A member folder resumes like any run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as config_mod
from .. import distributed
from .callbacks import Callback, FinalModel
from ..top_models import TopEntry
from ..config import Config
from ..data.coco import CocoIndex
from ..files import read_json
from ..layout import RunPaths
from .metric_log import read_metric_rows
from .summary import FoldSummary
from ..metrics import METRIC_KEYS, Metrics
from .fit import fit


@dataclass(frozen=True)
class Member:
    """One model to refit: its folder name below the refit root, its config (epochs and seed set) and where
    the config came from."""

    name: str
    config: Config
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Member":
        return cls(d["name"], config_mod.from_dict(d["config"], f"refit member {d['name']}"), d["source"])


def fold_epochs(folds: Sequence[FoldSummary], configured: int = 0, capped_factor: float = 1.0) -> int:
    """The epochs a refit trains: `configured` if set, else the folds' mean best epoch (1-based), rounded,
    times `capped_factor` when every fold's best epoch was its last (see `capped`)."""
    return refit_epochs(folds, configured, capped_factor)[0]


def refit_epochs(folds: Sequence[FoldSummary], configured: int = 0, capped_factor: float = 1.0,
                 ) -> tuple[int, str]:
    """fold_epochs, and why: the folds' choice, refit.epochs, or the folds' choice lengthened because the
    last epoch stopped them while their score still rose (bench/refit_epochs.py measured that a refit of
    twice as many epochs then gives better members: RBC test mAP 0.60 -> 0.64, cards 0.36 -> 0.48)."""
    if configured:
        return configured, "refit.epochs"
    chosen = [f.best_epoch + 1 for f in folds if f.best_epoch >= 0]
    if not chosen:
        raise ValueError("no fold finished with a best epoch, so there is nothing to refit from")
    epochs = max(1, int(sum(chosen) / len(chosen) + 0.5))
    if capped(folds) and capped_factor != 1.0:
        longer = max(1, int(epochs * capped_factor + 0.5))
        return longer, (f"the folds' mean best epoch ({epochs}) x refit.capped_factor {capped_factor:g}: every "
                        "fold's best epoch was its last, so the folds stopped while still improving")
    return epochs, "the folds' mean best epoch"


def capped(folds: Sequence[FoldSummary]) -> bool:
    """Whether every fold's best epoch was the last it ran, without early stopping: the epoch limit stopped
    them while their score still rose, so their best epoch is a lower bound."""
    return bool(folds) and all(f.capped for f in folds)


def seed_members(cfg: Config, epochs: int, count: int, prefix: str = "") -> list[Member]:
    """`count` members of one config, seeds train.seed, train.seed + 1, ..."""
    return [member(cfg, epochs, cfg.train.seed + i, f"{prefix}seed_{cfg.train.seed + i}",
                   f"{prefix.rstrip('_') or 'config'}, seed {cfg.train.seed + i}") for i in range(count)]


def member(cfg: Config, epochs: int, seed: int, name: str, source: str) -> Member:
    values = {"train.epochs": epochs, "train.patience": 0, "train.min_epochs": 1, "train.seed": seed}
    return Member(name, config_mod.with_values(cfg, values, source=f"refit {name}"), source)


def refit(members: Sequence[Member], train_index: CocoIndex, val_index: CocoIndex, root: str | Path, *,
          progress: bool = False, log: Callable[[str], None] = print,
          process: distributed.Process | None = None, callbacks: Sequence[Callback] = ()) -> list[TopEntry]:
    """Train each member on `train_index` in root/NAME (a finished one is not trained again) and return
    their entries, in order: path (relative to root), member name, source, epoch and the last epoch's
    validation metrics (for the log: they chose nothing). `callbacks` join each member's fit."""
    root = Path(root)
    entries = []
    for m in members:
        paths = RunPaths(root / m.name)
        if not (paths.model.exists() and paths.summary.exists()):
            log(f"refit {m.name} ({m.source}): {len(train_index.images)} images, {m.config.train.epochs} epochs")
            fit(m.config, train_index, val_index, paths.root, callbacks=[FinalModel(paths.model), *callbacks],
                progress=progress, log=lambda s, name=m.name: log(f"refit {name}: {s}"), process=process)
            paths.last.unlink(missing_ok=True)
        summary = read_json(paths.summary)
        metrics = _last_metrics(paths)
        entries.append(TopEntry(str(paths.model.relative_to(root)), None, summary["epochs_run"] - 1,
                                metrics.score, metrics, m.name, m.source,
                                summary.get("train_images")))
    return entries


def _last_metrics(paths: RunPaths) -> Metrics:
    """The last epoch's metrics, as metrics.csv holds them (NaN where a refit validated nothing)."""
    rows = read_metric_rows(paths.root)
    return Metrics.from_dict({k: rows[-1][k] for k in METRIC_KEYS if k in rows[-1]} if rows else {})
