"""run_cv(): k-fold cross-validation on the training split, resumable, then the models it publishes.

Folds are made once (folds.json) before training; each fold is a fit() run in fold_K/; summary.json holds
the finished folds' best epochs with mean and std, updated as the run goes (layout.py draws the whole
folder). The folds estimate the config's score and choose its epochs; the published models (top_models.json)
are then refit on all of data.train (refit.py), or with refit.strategy folds are the cv.top_k best epochs of
each fold (kept in top/ as the folds train, ranked within their fold).
"""
from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .callbacks import Callback, FoldColumn, KeepTopK
from ..top_models import TopEntry, TopK, read_index
from ..config import Config
from ..data.coco import CocoIndex
from ..data.folds import PhotoGroups, make_folds, photo_groups, resolve_strategy
from ..analysis.evaluate import tune_run
from ..files import read_json, write_json
from ..layout import RunPaths
from ..metrics import Metrics, OperatingPoint, Thresholds, coco_map, match, metrics_from
from .summary import FoldSummary, across
from ..thresholds import tune_thresholds
from .. import config as config_mod
from .. import distributed, preflight
from .refit import refit as refit_members, refit_epochs, seed_members
from ..runs import owned_run
from ..data.splits import load_splits
from .fit import fit


@dataclass
class CVResult:
    run_dir: Path
    folds: list[FoldSummary]
    mean: Metrics  # across the folds, metric by metric
    std: Metrics
    top_models: list[TopEntry]
    published: Any = None  # evaluate.HeldOutResult: the refit members on data.val and their operating point


def run_cv(
    cfg: Config,
    run_dir: str | Path,
    *,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    index: CocoIndex | None = None,
    val_index: CocoIndex | None = None,
    refit: bool = True,
) -> CVResult:
    """Train every fold of the config's training split (skipping finished ones), then (with `refit` and a
    refit.strategy other than folds) the published members on all of it, and return the summary.

    `callbacks` join every fold's fit (the fold's number is FitState.fold) and every refit member's; one may
    raise to stop the run.
    The run folder is locked against a second process for the whole run. A study's trials pass refit=False: the
    study refits its best trial's config only.
    """
    cfg = config_mod.resolve_paths(cfg)  # once, here: paths absolute, the pipeline file read
    preflight.check(cfg)
    process = distributed.setup(cfg.train.device, cfg.train.amp, log)
    with owned_run(run_dir, cfg, force=force, log=log) as run:
        return _run_cv(cfg, run, process, callbacks=callbacks, progress=progress,
                       log=distributed.main_only(process.world, log), index=index, val_index=val_index, refit=refit)


def _run_cv(cfg: Config, run: Path, process: distributed.Process, *, callbacks, progress, log, index, val_index,
            refit) -> CVResult:
    w = process.world
    fold_models = cfg.refit.strategy == "folds"
    if index is None:
        index, val_index = load_splits(cfg, log)
    paths = RunPaths(run)
    if w.main:
        write_json(paths.env, environment(process))
    folds = distributed.broadcast(w, _folds(paths, index, cfg, log) if w.main else None)
    top = TopK(run, cfg.cv.top_k, log) if w.main and fold_models else None
    for k, val_ids in enumerate(folds):
        fold = paths.fold(k)
        if fold.summary.exists():
            log(f"fold {k}: finished earlier, skipped")
            continue
        val_set = set(val_ids)
        train_part = index.subset(r.id for r in index.images if r.id not in val_set)
        log(f"fold {k}/{len(folds)}: {len(train_part.images)} training, {len(val_ids)} validation images")
        keep = [KeepTopK(top)] if top is not None else []
        fit(cfg, train_part, index.subset(val_ids), fold.root, callbacks=[FoldColumn(k), *keep, *callbacks],
            progress=progress, log=log, process=process)
        if w.main:
            fold.last.unlink(missing_ok=True)
            write_summary(run)
        distributed.barrier(w)
    refitted = refit and not fold_models
    if refitted:
        val_index = load_splits(cfg, log)[1] if val_index is None else val_index
        _refit(cfg, paths, index, val_index, process, progress=progress, log=log, callbacks=callbacks)
    if not w.main:
        return read_summary(run)
    if refitted:  # the published members' operating point, chosen on data.val (what `predict RUN` uses)
        published = tune_run(cfg, run, val_index)
        return replace(write_summary(run), published=published)
    point = out_of_fold_operating_point(paths, index, folds, cfg) if fold_models else None
    if point is not None:
        write_json(paths.operating_point, point.to_dict())
        log(f"operating point from out-of-fold predictions: threshold {point.thresholds.default:.3f}, score "
            f"{point.score:.4f}")
    return write_summary(run)


def _refit(cfg: Config, paths: RunPaths, index: CocoIndex, val_index: CocoIndex, process: distributed.Process, *,
           progress, log, callbacks: Sequence[Callback] = ()) -> None:
    """The run's published members: its config with refit.members seeds, trained on all of `index` for the
    epochs the folds chose; top_models.json lists them."""
    epochs, why = refit_epochs(read_summary(paths.root).folds, cfg.refit.epochs, cfg.refit.capped_factor)
    log(f"refit: {cfg.refit.members} member(s) on all {len(index.images)} training images, {epochs} epochs ({why})")
    entries = refit_members(seed_members(cfg, epochs, cfg.refit.members), index, val_index, paths.refit,
                            progress=progress, log=log, process=process, callbacks=callbacks)
    w = process.world
    if w.main:
        prefix = paths.refit.relative_to(paths.root)
        write_json(paths.top_models, [replace(e, path=str(prefix / e.path)).to_dict() for e in entries])
    distributed.barrier(w)  # every rank's summary lists the members


def out_of_fold_results(run: RunPaths, folds: list[list[int]]) -> tuple[list[dict[str, Any]], list[int]] | None:
    """Every training image's predictions by the best epoch of the fold that did not train on it (COCO
    results), and those images' ids; None until every fold is done."""
    results, ids = [], []
    for k, val_ids in enumerate(folds):
        fold = run.fold(k)  # best_predictions.json is rewritten at every better epoch: done is its summary
        if not (fold.summary.exists() and fold.best_predictions.exists()):
            return None
        results += read_json(fold.best_predictions)
        ids += val_ids
    return results, ids


def out_of_fold_operating_point(run: RunPaths, index: CocoIndex, folds: list[list[int]], cfg: Config,
                                ) -> OperatingPoint | None:
    """Thresholds for the run's models used alone, chosen on out-of-fold predictions: every training image
    as predicted by the best epoch of the fold that did not train on it (None until every fold is done)."""
    found = out_of_fold_results(run, folds)
    if found is None:
        return None
    results, ids = found
    gt = index.subset(ids).to_coco()
    matched, coco = match(gt, results, cfg.eval.iou_threshold), coco_map(gt, results)
    thresholds, metrics = tune_thresholds(gt, matched, coco, cfg.score, cfg.tune.min_class_boxes)
    configured = metrics_from(coco, matched, gt, cfg.score, Thresholds(cfg.eval.score_threshold, {}))
    return OperatingPoint(thresholds, cfg.ensemble, metrics.score, configured.score, metrics, len(ids),
                          "out-of-fold predictions: each fold's best epoch on the images it did not train on")


def write_summary(run: Path) -> CVResult:
    """Summarise the finished folds of a run into RUN/summary.json."""
    result = read_summary(run)
    write_json(RunPaths(run).summary, {"folds_finished": len(result.folds),
                                      "folds": [f.to_dict() for f in result.folds],
                                      "mean": result.mean.to_dict(), "std": result.std.to_dict(),
                                      "top_models": [e.to_dict() for e in result.top_models]})
    return result


def read_summary(run: Path) -> CVResult:
    """The finished folds of a run, mean and std across them, and the top models (unfinished runs too)."""
    folds = []
    paths = RunPaths(run)
    for k, fold in paths.fold_runs():
        if fold.summary.exists():
            folds.append(FoldSummary.of_fit(k, read_json(fold.summary)))
    mean, std = across(folds)
    return CVResult(run, folds, mean, std, read_index(paths)[0])


def environment(process: distributed.Process | None = None) -> dict[str, Any]:
    import albumentations
    import timm
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "albumentations": albumentations.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": torch.version.cuda if cuda else None,
        "threads": torch.get_num_threads(), "git_commit": _git_commit(),
        "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **({"precision": process.precision.name, "precision_reason": process.precision.reason} if process else {}),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _folds(run: RunPaths, index: CocoIndex, cfg: Config, log: Callable[[str], None]) -> list[list[int]]:
    path = run.folds
    if path.exists():
        return read_json(path)["folds"]
    cv = cfg.cv
    similarity = cfg.data.copy_similarity
    strategy, warning = resolve_strategy(index, cv.strategy, cv.group_by, similarity)
    if warning:
        log(f"warning: {warning}")
    folds = make_folds(index, n_folds=cv.folds, strategy=strategy, group_by=cv.group_by, similarity=similarity,
                       seed=cv.seed)
    write_json(path, {"strategy": strategy, "configured_strategy": cv.strategy, "group_by": cv.group_by,
                      "seed": cv.seed, "folds": folds}, indent=None)
    log(f"folds: {strategy}" + (f" by {cv.group_by} and content" if strategy == "group" else "") +
        (" (cv.strategy auto)" if cv.strategy == "auto" else ""))
    if strategy == "group":
        log(_content_note(photo_groups(index, cv.group_by, similarity)))
    return folds


def _content_note(groups: PhotoGroups) -> str:
    joined = groups.joined_by_content
    note = f"folds: {len(set(groups.keys))} photos"
    if not joined:
        return note
    shown = ", ".join(f"{a} ~ {b}" for a, b in joined[:3]) + (f" and {len(joined) - 3} more" if len(joined) > 3 else "")
    return f"{note}; by content, {len(joined)} pair(s) of names show one photo and share a fold ({shown})"
