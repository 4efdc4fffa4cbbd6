"""fit(): train one train/val split, evaluating every epoch; everything else is a callback.

fit() owns its run folder: it locks it, checks that it may be resumed and records the config (runs.py),
writes anchors.json, augment.json and summary.json itself, and leaves the rest to callbacks (callbacks.py):
metrics.csv, last.pt (for resuming), best.pt or the caller's model files, EMA, TensorBoard, early
stopping. It knows nothing about Optuna: a study adds its pruning hook as one more callback.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import config as config_mod
from . import distributed, preflight
from .callbacks import BestCheckpoint, Callback, FitState, Progress, ordered, standard
from .checkpoint import Checkpoint, load_checkpoint, set_rng_state
from .config import Config
from .data.overlap import check_disjoint
from .data.coco import CocoIndex, load_coco
from .data.dataset import CocoDetection
from .data.sampling import balanced_weights, box_shapes, class_counts, loader, train_loader
from .data.summary import aspect_warning, crowding_warning
from .data.transforms import build_eval_transforms, build_train_transforms, pipeline_dict
from .engine import predict, to_coco_results, train_one_epoch
from .errors import DatasetError, TrainingError
from .files import read_json, write_json
from .layout import RunPaths
from .metric_log import LOSS_KEYS
from .metrics import METRIC_KEYS, evaluate_detections
from .models import faster_rcnn
from .optim import LrSchedule, build_optimizer
from .runs import owned_run


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, Any]
    best_path: Path | None
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    anchors: dict[str, Any] | None = None
    train_images: int = 0


def load_splits(cfg: Config) -> tuple[CocoIndex, CocoIndex]:
    """The validated training and validation splits named by the config (shared label map)."""
    d = cfg.data
    options = dict(keep_empty=d.keep_empty, drop_placeholder_categories=d.drop_placeholder_categories,
                   strict_boxes=d.strict_boxes)
    train = load_coco(d.train.annotations, d.train.images_dir, **options)
    if not any(len(r.boxes) for r in train.images):
        raise DatasetError(f"{train.path}: the training split has no boxes, so there is nothing to learn; "
                           "check its 'annotations' list (`detector check-data` shows what it holds)")
    val = load_coco(d.val.annotations, d.val.images_dir, label_map=train.label_map, **options)
    check_disjoint([("data.train", train), ("data.val", val)])  # scores on copies of training images mean nothing
    return train, val


def load_test(cfg: Config, label_map) -> CocoIndex | None:
    """The optional data.test split (None when the config names none), on the training split's label map."""
    d = cfg.data
    if not d.test.annotations:
        return None
    test = load_coco(d.test.annotations, d.test.images_dir, label_map=label_map, keep_empty=True,
                     drop_placeholder_categories=d.drop_placeholder_categories, strict_boxes=d.strict_boxes)
    if not any(len(r.boxes) for r in test.images):
        raise DatasetError(f"{test.path}: data.test has no boxes; a test split needs annotations")
    return test


def seed_everything(seed: int) -> None:
    """Every fit starts from its own seed (not once per process), so a fold trains the same whether or not
    the folds before it ran in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    cfg: Config,
    train_index: CocoIndex,
    val_index: CocoIndex,
    run_dir: str | Path,
    *,
    callbacks: Sequence[Callback] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
    process: distributed.Process | None = None,
) -> FitResult:
    """Train on `train_index`, evaluate `val_index` every epoch; resume from run_dir/last.pt if present.

    The run folder is locked against a second process, then checked and recorded (runs.owned_run): a run of
    another config is refused, or cleared with `force`. `callbacks` are what the caller adds to the ones
    the config asks for (callbacks.standard); None keeps the best epoch's model as best.pt. Under torchrun
    every rank calls fit; rank 0 alone writes. `process` is the caller's once-per-process setup.
    """
    preflight.check(cfg)
    process = process or distributed.setup(cfg.train.device, cfg.train.amp)
    extra = [BestCheckpoint()] if callbacks is None else list(callbacks)
    with owned_run(run_dir, cfg, force=force, log=log) as run:
        return _fit(cfg, train_index, val_index, RunPaths(run), process, extra, progress=progress and process.world.main,
                    log=distributed.main_only(process.world, log))


def _fit(cfg: Config, train_index: CocoIndex, val_index: CocoIndex, paths: RunPaths, process: distributed.Process,
         extra: list[Callback], *, progress: bool, log: Callable[[str], None]) -> FitResult:
    seed_everything(cfg.train.seed)
    w = process.world
    resume = load_checkpoint(paths.last) if paths.last.exists() else None
    state, anchor_info = _setup(cfg, train_index, val_index, paths, process, resume, log)
    state.callbacks = cbs = ordered(standard(cfg) + extra, w)
    _warn_about_data(cfg, (train_index, val_index), log)
    if resume is not None:
        _restore(state, resume, paths.last)
    for cb in cbs:
        cb.on_fit_start(state)
    state.trained = distributed.wrap(state.model, process, cfg.train.sync_bn)  # after the EMA copied the model
    if resume is not None:
        for cb in cbs:
            if cb.key in resume.callbacks:
                cb.load_state_dict(resume.callbacks[cb.key])
        log(f"{paths.root}: stopped early after epoch {resume.epoch}; nothing left to train"
            if state.progress.stopped_early else f"resuming {paths.root} after epoch {resume.epoch}")
    sample_weights = balanced_weights(train_index) if cfg.train.balanced_sampler else None
    val_loader = _val_loader(cfg, val_index, w)
    first = cfg.train.epochs if state.progress.stopped_early else state.progress.next_epoch
    for epoch in range(first, cfg.train.epochs):
        state.epoch = epoch
        for cb in cbs:
            cb.on_epoch_start(state)
        state.train_set.set_epoch(epoch)
        lr = state.optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(
            state.trained, train_loader(state.train_set, cfg, epoch, sample_weights, w), state.optimizer,
            state.scheduler, state.scaler, device=process.device, precision=process.precision, epoch=epoch,
            grad_clip=cfg.train.grad_clip, progress=progress, any_rank_failed=lambda failed: distributed.any_true(w, failed),
            after_step=lambda: [cb.after_step(state) for cb in cbs])
        losses.update(distributed.mean(w, {k: losses[k] for k in LOSS_KEYS if k in losses}))
        start = time.perf_counter()
        state.metrics, state.results = _evaluate(state.kept, val_loader, state.gt, train_index.label_map, cfg, process,
                                                 progress)
        eval_seconds = time.perf_counter() - start
        state.row = {"epoch": epoch, "lr": lr, **{k: losses.get(k, 0.0) for k in LOSS_KEYS},
                     **{k: state.metrics[k] for k in METRIC_KEYS}, "image_size": state.image_size,
                     "train_seconds": losses["train_seconds"], "eval_seconds": eval_seconds,
                     "checkpoint_seconds": 0.0, "seconds": losses["train_seconds"] + eval_seconds}
        state.improved = state.progress.update(epoch, state.metrics)
        state.progress.history.append(state.row)  # the same dict: what callbacks add to the row is kept
        state.row["per_class"] = state.metrics["per_class"]
        for cb in cbs:
            cb.on_epoch_end(state)
        if state.progress.stopped_early:
            break
    for cb in cbs:
        cb.on_fit_end(state)
    result = _result(state, anchor_info, len(train_index.images))
    if w.main:
        _write_summary(paths, result)
    distributed.barrier(w)  # the next fold or command reads what rank 0 wrote
    return result


def _setup(cfg: Config, train_index: CocoIndex, val_index: CocoIndex, paths: RunPaths, process: distributed.Process,
           resume: Checkpoint | None, log: Callable[[str], None]) -> tuple[FitState, dict[str, Any] | None]:
    """The model (its anchors fitted now, or the resumed run's), optimizer, schedule and datasets."""
    size, w = cfg.data.image_size, process.world
    label_map = train_index.label_map
    model, anchor_fit = faster_rcnn.build(
        cfg.model, num_classes=label_map.num_classes, image_size=size, seed=cfg.train.seed,
        anchor_shapes=resume.anchors if resume else None, box_shapes=box_shapes(train_index, size),
        class_counts=class_counts(train_index))
    anchors = resume.anchors if resume else (anchor_fit.shapes if anchor_fit and anchor_fit.used else None)
    anchor_info = _anchor_info(resume, anchor_fit, paths, log, write=w.main)
    model.to(process.device)
    train_set = CocoDetection(train_index, build_train_transforms(cfg.data.augment, size), seed=cfg.train.seed,
                              bit_depth=cfg.data.bit_depth)
    if w.main:  # what the run trains with, in Albumentations' own form
        write_json(paths.augment, pipeline_dict(train_set.pipeline))
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / w.size) / distributed.local_batch(w, cfg.train.batch_size))
    optimizer = build_optimizer(cfg.train, model)
    schedule = LrSchedule(cfg.train.scheduler, steps_per_epoch * cfg.train.epochs,
                          round(steps_per_epoch * cfg.train.warmup_epochs))
    described = dict(config=config_mod.resolve_paths(cfg).to_dict(), label_map=label_map.to_dict(),
                     anchors=_plain_anchors(anchors), image_size=size, normalization=faster_rcnn.normalization(model))
    state = FitState(cfg=cfg, paths=paths, world=w, model=model, trained=model,
                     optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                     scaler=torch.amp.GradScaler(process.device.type, enabled=process.precision.scaled),
                     train_set=train_set, val_index=val_index, gt=val_index.to_coco(), described=described, log=log,
                     image_size=size)
    return state, anchor_info


def _warn_about_data(cfg: Config, indexes: Sequence[CocoIndex], log: Callable[[str], None]) -> None:
    for index in indexes:
        for warning in (crowding_warning(index, cfg.model.max_detections), aspect_warning(index, cfg.data.image_size)):
            if warning:
                log(f"warning: {warning}")


def _val_loader(cfg: Config, val_index: CocoIndex, w: distributed.World):
    """The validation images (this rank's shard of them under torchrun)."""
    shard = val_index.subset(r.id for r in val_index.images[w.rank::w.size]) if w.active else val_index
    return loader(CocoDetection(shard, build_eval_transforms(cfg.data.image_size), bit_depth=cfg.data.bit_depth),
                  cfg.eval.batch_size, cfg.train.num_workers)


def _restore(state: FitState, resume: Checkpoint, last: Path) -> None:
    state.model.load_state_dict(resume.model)
    try:
        state.optimizer.load_state_dict(resume.optimizer)
    except ValueError:  # parameter groups of another shape: written before groups were split
        raise TrainingError(f"{last}: its optimizer state has other parameter groups than this version of "
                            "detector makes, so the run cannot be resumed exactly; start it over (--force) or "
                            "use another output folder") from None
    state.scheduler.load_state_dict(resume.scheduler)
    state.scaler.load_state_dict(resume.scaler)
    w = state.world
    set_rng_state(resume.rng_ranks[w.rank] if len(resume.rng_ranks) == w.size else resume.rng)
    state.progress = Progress(**resume.train_state)


def _result(state: FitState, anchor_info: dict[str, Any] | None, train_images: int) -> FitResult:
    p, best = state.progress, state.paths.best
    return FitResult(best_epoch=p.best_epoch, best_metrics=p.best_metrics, best_path=best if best.exists() else None,
                     epochs_run=len(p.history), stopped_early=p.stopped_early, history=p.history,
                     anchors=anchor_info, train_images=train_images)


def _anchor_info(resume: Checkpoint | None, anchor_fit, paths: RunPaths, log, write: bool = True) -> dict[str, Any] | None:
    path = paths.anchors
    if resume is not None:
        return read_json(path) if path.exists() else None
    if anchor_fit is None:
        return None
    info = anchor_fit.to_dict()
    if write:
        write_json(path, info)
    f, d = anchor_fit.fitted, anchor_fit.default
    log(f"anchors (k-means on {anchor_fit.num_boxes} boxes): mean IoU {f.mean_iou:.3f} vs default "
        f"{d.mean_iou:.3f}; best possible recall {f.bpr:.3f} vs {d.bpr:.3f}"
        + ("" if anchor_fit.used else "; torchvision's defaults kept (model.anchors auto)"))
    return info


def _plain_anchors(anchors) -> list | None:
    return None if anchors is None else [[[float(w), float(h)] for w, h in level] for level in anchors]


def _evaluate(model, loader, gt, label_map, cfg: Config, process: distributed.Process, progress: bool):
    predictions = predict(model, loader, device=process.device, precision=process.precision, progress=progress,
                          desc="validate")
    results = to_coco_results(predictions, label_map)
    w = process.world
    if w.active:  # each rank predicted its shard of the validation images
        results = sorted((r for part in distributed.gather(w, results) for r in part), key=lambda r: r["image_id"])
    metrics = evaluate_detections(gt, results, score_threshold=None,  # selection: at this split's best threshold
                                  iou_threshold=cfg.eval.iou_threshold, score=cfg.score)
    return metrics, results


def _write_summary(paths: RunPaths, result: FitResult) -> None:
    summary = {"best_epoch": result.best_epoch, "best_metrics": result.best_metrics,
               "best_checkpoint": str(result.best_path) if result.best_path else None,
               "epochs_run": result.epochs_run, "stopped_early": result.stopped_early, "anchors": result.anchors,
               "train_images": result.train_images}
    write_json(paths.summary, summary)
