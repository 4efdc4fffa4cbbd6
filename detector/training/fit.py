"""fit(): train one train/val split, evaluating every epoch; everything else is a callback.

fit() owns its run folder: it locks it, checks that it may be resumed and records the config (runs.py),
builds the model, optimizer and loaders, and runs the loop. Every file it writes and every feature beside
training and evaluating is a callback (callbacks.py): metrics.csv, last.pt, best.pt or the caller's model
files, summary.json, EMA, TensorBoard, early stopping. It knows nothing about Optuna: a study adds its
pruning hook as one more callback.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import config as config_mod
from .. import distributed, preflight
from .callbacks import BestCheckpoint, Callback, FitResult, FitState, ResumeFile, ordered, standard
from ..config import Config
from ..data.coco import CocoIndex
from ..data.sampling import balanced_weights, box_shapes, class_counts, train_loader, train_set, train_side, val_loader
from .. import hardware
from ..engine import train_one_epoch
from ..layout import RunPaths
from .metric_log import LOSS_KEYS, epoch_row
from ..models import faster_rcnn
from ..models.spec import ModelSpec
from ..optim import LrSchedule, build_optimizer
from ..runs import owned_run
from ..inference.slicing import tile_size
from .validation import validate

__all__ = ["FitResult", "fit", "seed_everything"]


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
    cfg = config_mod.resolve_paths(cfg)  # once, here: paths absolute, the pipeline file read
    preflight.check(cfg)
    process = process or distributed.setup(cfg.train.device, cfg.train.amp, log)
    extra = [BestCheckpoint()] if callbacks is None else list(callbacks)
    with owned_run(run_dir, cfg, force=force, log=log) as run:
        return _fit(cfg, train_index, val_index, RunPaths(run), process, extra, progress=progress and process.world.main,
                    log=distributed.main_only(process.world, log))


def _fit(cfg: Config, train_index: CocoIndex, val_index: CocoIndex, paths: RunPaths, process: distributed.Process,
         extra: list[Callback], *, progress: bool, log: Callable[[str], None]) -> FitResult:
    seed_everything(cfg.train.seed)
    w = process.world
    resume = ResumeFile.read(paths)
    state = _setup(cfg, train_index, val_index, paths, process, resume.anchors if resume else None, log)
    state.callbacks = cbs = ordered(standard(cfg) + extra, w)
    if resume is not None:
        ResumeFile.restore(state, resume)
    for cb in cbs:
        cb.on_fit_start(state)
    state.trained = distributed.wrap(state.model, process, cfg.train.sync_bn)  # after the EMA copied the model
    if resume is not None:
        ResumeFile.restore_callbacks(state, resume)
    sample_weights = balanced_weights(train_index) if cfg.train.balanced_sampler else None
    loader = val_loader(cfg, val_index, w)
    tile = (tile_size(cfg.ensemble.slice, state.spec.train_side, cfg.data.image_size)
            if cfg.ensemble.slice else 0)
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
            grad_clip=cfg.train.grad_clip, progress=progress, first_failure=lambda failure: distributed.first_failure(w, failure),
            after_step=lambda: [cb.after_step(state) for cb in cbs])
        losses.update(distributed.mean(w, {k: losses[k] for k in LOSS_KEYS if k in losses}))
        start = time.perf_counter()
        state.metrics, state.results = validate(state.kept, loader, state.gt, train_index.label_map, cfg, process,
                                                progress, tile)
        state.row = epoch_row(epoch, lr, losses, state.metrics, state.image_size, time.perf_counter() - start)
        state.improved = state.progress.update(epoch, state.metrics)
        state.progress.history.append(state.row)  # the same dict: what callbacks add to the row is kept
        state.row["per_class"] = {n: c.to_dict() for n, c in state.metrics.per_class.items()}
        for cb in cbs:
            cb.on_epoch_end(state)
        if state.progress.stopped_early:
            break
    for cb in cbs:
        cb.on_fit_end(state)
    distributed.barrier(w)  # the next fold or command reads what rank 0 wrote
    return FitResult.of(state)


# bf16 - fp32 test mAP of `detector train` at equal epochs, tf_efficientnet_lite0 on RBC, seeds 0 and 1
# (bench/precision.py, AMD EPYC Zen 4): mAP@0.5 the same (+0.006, -0.006), mAP beyond the seed spread of 0.020
BF16_COST = "0.024-0.039"


def report_bf16(cfg: Config, process: distributed.Process, model: torch.nn.Module, log: Callable[[str], None]) -> None:
    """With train.amp auto on a CPU (which trains in fp32), log what a probe of the model finds bf16 would
    save here (hardware.cpu_precision) and, where it is faster, what it cost in accuracy where measured."""
    if cfg.train.amp != "auto" or process.device.type != "cpu":
        return
    key = (repr(cfg.model), cfg.data.image_size)
    choice = hardware.cpu_precision(getattr(model, "backbone", model), cfg.data.image_size, key)
    reason = choice.reason
    if choice.bf16:  # faster here, but not free: measured, bf16 training loses accuracy (bench/precision.py)
        reason = (f"fp32: bf16 would take {choice.ratio:.2f}x fp32's time on this CPU, but training in bf16 lost "
                  f"{BF16_COST} test mAP at equal epochs (RBC, 2 seeds); set train.amp: bf16 to trade it for the speed")
    log(f"precision {reason}")


def _setup(cfg: Config, train_index: CocoIndex, val_index: CocoIndex, paths: RunPaths, process: distributed.Process,
           resumed_anchors: list | None, log: Callable[[str], None]) -> FitState:
    """The model (its anchors fitted now, or the resumed run's), optimizer, schedule, scaler and datasets."""
    size, w = cfg.data.image_size, process.world
    label_map = train_index.label_map
    model, anchor_fit = faster_rcnn.build(
        cfg.model, num_classes=label_map.num_classes, image_size=size, seed=cfg.train.seed,
        anchor_shapes=resumed_anchors, box_shapes=box_shapes(train_index, size, cfg.data.augment.crop), class_counts=class_counts(train_index))
    anchors = resumed_anchors or (anchor_fit.shapes if anchor_fit and anchor_fit.used else None)
    model.to(process.device)
    report_bf16(cfg, process, model, log)
    images = train_set(cfg, train_index)
    steps_per_epoch = math.ceil(math.ceil(len(images) / w.size) / distributed.local_batch(w, cfg.train.batch_size))
    optimizer = build_optimizer(cfg.train, model)
    schedule = LrSchedule(cfg.train.scheduler, steps_per_epoch * cfg.train.epochs,
                          round(steps_per_epoch * cfg.train.warmup_epochs))
    spec = ModelSpec(cfg, label_map, size, _plain_anchors(anchors),
                     train_side(train_index, cfg.data.augment.crop), faster_rcnn.normalization(model),
                     process.precision.name)
    return FitState(cfg=cfg, paths=paths, world=w, model=model, trained=model, optimizer=optimizer,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                    scaler=torch.amp.GradScaler(process.device.type, enabled=process.precision.scaled),
                    train_set=images, val_index=val_index, gt=val_index.to_coco(), spec=spec, log=log,
                    image_size=size, anchor_fit=anchor_fit if resumed_anchors is None else None)


def _plain_anchors(anchors) -> list | None:
    return None if anchors is None else [[[float(w), float(h)] for w, h in level] for level in anchors]
