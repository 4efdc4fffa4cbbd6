"""fit(): train one train/val split, evaluating every epoch, logging rows and keeping the best checkpoint.

fit() owns its run folder: it locks it, checks that it may be resumed and records the config (runs.py),
then writes everything as it happens: anchors.json, metrics.csv, last.pt (for resuming), best.pt and
summary.json (layout.RunPaths). It knows nothing about Optuna: it calls on_epoch_end(epoch, metrics), which
may raise to stop the run.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3

from . import config as config_mod
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config
from .data.checks import check_disjoint
from .data.coco import CocoIndex, load_coco
from .data.dataset import CocoDetection
from .data.images import read_image
from .data.sampling import balanced_weights, box_shapes, class_counts, loader, train_loader
from .data.summary import aspect_warning, crowding_warning
from .data.transforms import build_eval_transforms, build_train_transforms, pipeline_dict
from .errors import ConfigError, DatasetError, TrainingError
from .files import read_json, write_json
from .layout import RunPaths
from .engine import Precision, predict, resolve_device, resolve_precision, to_coco_results, train_one_epoch
from .metric_log import CSV_COLUMNS, LOSS_KEYS, append_row, rewrite_rows
from .metrics import METRIC_KEYS, evaluate_detections
from .models import faster_rcnn
from .optim import LrSchedule, build_optimizer
from . import distributed, preflight
from .runs import owned_run


OnEpochEnd = Callable[[int, dict[str, Any]], None]
Keep = Callable[[int, dict[str, Any], Callable[[Path], Any]], Any]


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
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def image_size_at(cfg: Config, epoch: int) -> int:
    p = cfg.train.progressive
    return p.start_size if p.start_size and epoch < p.epochs else cfg.data.image_size


def fit(
    cfg: Config,
    train_index: CocoIndex,
    val_index: CocoIndex,
    run_dir: str | Path,
    *,
    on_epoch_end: OnEpochEnd | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    extra_columns: dict[str, Any] | None = None,
    keep: Keep | None = None,
    save_best: bool = True,
    force: bool = False,
) -> FitResult:
    """Train on `train_index`, evaluate `val_index` every epoch; resume from run_dir/last.pt if present.

    The run folder is locked against a second process, then checked and recorded (runs.owned_run): a run of
    another config is refused, or cleared with `force`. Under torchrun every rank calls fit; rank 0 alone
    writes (distributed.py). `keep(epoch, metrics,
    save)` is offered every epoch's model (save(path) writes its checkpoint); `save_best=False` leaves
    best.pt out (k-fold runs keep their top models through `keep`).
    """
    preflight.check(cfg)
    w = distributed.start(resolve_device(cfg.train.device))
    with owned_run(run_dir, cfg, force=force, log=log) as run:
        return _fit(cfg, train_index, val_index, run, w, on_epoch_end=on_epoch_end, progress=progress and w.main,
                    log=distributed.main_only(w, log), extra_columns=extra_columns, keep=keep if w.main else None,
                    save_best=save_best)



def _fit(cfg: Config, train_index: CocoIndex, val_index: CocoIndex, run: Path, w: distributed.World, *,
         on_epoch_end, progress, log, extra_columns, keep, save_best) -> FitResult:
    seed_everything(cfg.train.seed)
    device = distributed.device_of(w, resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.amp, device)
    size = cfg.data.image_size
    label_map = train_index.label_map
    paths = RunPaths(run)
    last = paths.last
    resume = load_checkpoint(last) if last.exists() else None

    model, anchor_fit = faster_rcnn.build(
        cfg.model, num_classes=label_map.num_classes, image_size=size, seed=cfg.train.seed,
        anchor_shapes=resume["anchors"] if resume else None, box_shapes=box_shapes(train_index, size),
        class_counts=class_counts(train_index))
    anchors = resume["anchors"] if resume else (anchor_fit.shapes if anchor_fit and anchor_fit.used else None)
    anchor_info = _anchor_info(resume, anchor_fit, run, log, write=w.main)
    model.to(device)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    evaluated = ema.module if ema is not None else model  # what is validated, kept and predicted with
    trained = model
    if w.active:
        if cfg.train.sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm); on CPU leave it false: "
                                  "each process then keeps BatchNorm statistics of its own share of the batch")
            trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)

    train_ds = CocoDetection(train_index, build_train_transforms(cfg.data.augment, size), seed=cfg.train.seed,
                             bit_depth=cfg.data.bit_depth)
    if w.main:  # what the run trains with, in Albumentations' own form
        write_json(paths.augment, pipeline_dict(train_ds.pipeline))
    val_shard = val_index.subset(r.id for r in val_index.images[w.rank::w.size]) if w.active else val_index
    val_loader = loader(CocoDetection(val_shard, build_eval_transforms(size), bit_depth=cfg.data.bit_depth), cfg.eval.batch_size,
                         cfg.train.num_workers)
    sample_weights = balanced_weights(train_index) if cfg.train.balanced_sampler else None
    batch_size = distributed.local_batch(w, cfg.train.batch_size)
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / w.size) / batch_size)
    optimizer = build_optimizer(cfg.train, model)
    schedule = LrSchedule(cfg.train.scheduler, steps_per_epoch * cfg.train.epochs,
                          round(steps_per_epoch * cfg.train.warmup_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    gt = val_index.to_coco()
    for index in (train_index, val_index):
        for warning in (crowding_warning(index, cfg.model.max_detections), aspect_warning(index, size)):
            if warning:
                log(f"warning: {warning}")

    board = _board(cfg, paths, val_index) if w.main else None
    state = _TrainState()
    csv_path = paths.metrics
    columns = tuple(extra_columns or ()) + CSV_COLUMNS
    if resume:
        state = _restore(resume, model, optimizer, scheduler, scaler, last, w)
        if ema is not None:
            ema.module.load_state_dict(resume.get("ema") or resume["model"])
        log(f"{run}: stopped early after epoch {resume['epoch']}; nothing left to train" if state.stopped_early
            else f"resuming {run} after epoch {resume['epoch']}")
    if w.main:
        rewrite_rows(csv_path, state.history, columns)  # the log holds exactly the epochs the checkpoint has

    for epoch in range(cfg.train.epochs if state.stopped_early else state.next_epoch, cfg.train.epochs):
        epoch_size = image_size_at(cfg, epoch)
        train_ds.pipeline = build_train_transforms(cfg.data.augment, epoch_size)
        train_ds.set_epoch(epoch)
        batches = train_loader(train_ds, cfg, epoch, sample_weights, w)
        lr = optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(trained, batches, optimizer, scheduler, scaler, device=device, precision=precision,
                                 epoch=epoch, grad_clip=cfg.train.grad_clip, progress=progress,
                                 any_rank_failed=lambda failed: distributed.any_true(w, failed),
                                 after_step=None if ema is None else lambda: ema.update(model, step=scheduler.last_epoch))
        losses.update(distributed.mean(w, {k: losses[k] for k in LOSS_KEYS if k in losses}))
        start = time.perf_counter()
        metrics, results = _evaluate(evaluated, val_loader, gt, label_map, cfg, device, precision, progress, w)
        eval_seconds = time.perf_counter() - start
        row = {**(extra_columns or {}), "epoch": epoch, "lr": lr, **{k: losses.get(k, 0.0) for k in LOSS_KEYS},
               **{k: metrics[k] for k in METRIC_KEYS},
               "image_size": epoch_size, "train_seconds": losses["train_seconds"], "eval_seconds": eval_seconds,
               "seconds": losses["train_seconds"] + eval_seconds}
        improved = state.update(epoch, metrics)
        state.stopped_early = state.should_stop(epoch, cfg.train.patience, cfg.train.min_epochs)
        state.history.append({**row, "per_class": metrics["per_class"]})
        start = time.perf_counter()
        common = dict(config=config_mod.resolve_paths(cfg).to_dict(), label_map=label_map.to_dict(),
                      anchors=_plain_anchors(anchors), image_size=size,
                      normalization=faster_rcnn.normalization(model))
        snapshot = {"model": evaluated.state_dict(), "epoch": epoch, "metrics": metrics, **common}
        rngs = distributed.gather(w, rng_state())  # each rank's, so a resumed rank draws what it would have
        if w.main:
            if improved:
                write_json(paths.best_predictions, results, indent=None)
                if save_best:
                    save_checkpoint(paths.best, snapshot)
            if keep is not None:
                keep(epoch, metrics, lambda path: save_checkpoint(path, snapshot))
            save_checkpoint(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                   "rng": rngs[0], "rng_ranks": rngs if w.active else [], "epoch": epoch,
                                   "metrics": metrics, "train_state": state.to_dict(),
                                   "ema": ema.module.state_dict() if ema is not None else None, **common})
        row["checkpoint_seconds"] = time.perf_counter() - start
        row["seconds"] += row["checkpoint_seconds"]
        state.history[-1].update(row)
        if w.main:
            append_row(csv_path, row, columns)
        if board is not None:
            board[0].epoch(epoch, row, improved, gt, results, dict(zip(label_map.category_ids, label_map.names)),
                           board[1], cfg.eval.score_threshold)
        log(f"epoch {epoch}: loss {losses['loss']:.4f}  map_50 {metrics['map_50']:.4f}  f1 {metrics['f1']:.4f}  "
            f"score {metrics['score']:.4f}  ({row['seconds']:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if state.stopped_early:
            log(f"early stop: no better score for {cfg.train.patience} epochs")
            break

    result = FitResult(best_epoch=state.best_epoch, best_metrics=state.best_metrics,
                       best_path=paths.best if paths.best.exists() else None,
                       epochs_run=len(state.history), stopped_early=state.stopped_early,
                       history=state.history, anchors=anchor_info, train_images=len(train_index.images))
    if board is not None:
        board[0].close()
    if w.main:
        _write_summary(run, result)
    distributed.barrier(w)  # the next fold or command reads what rank 0 wrote
    return result


@dataclass
class _TrainState:
    next_epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        self.next_epoch = epoch + 1
        score = metrics["score"]
        if math.isfinite(score) and score > self.best_score:
            self.best_epoch, self.best_score, self.best_metrics = epoch, score, metrics
            return True
        return False

    def should_stop(self, epoch: int, patience: int, min_epochs: int) -> bool:
        return patience > 0 and epoch + 1 >= min_epochs and epoch - self.best_epoch >= patience

    def to_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_metrics": self.best_metrics, "stopped_early": self.stopped_early, "history": self.history}


def _board(cfg: Config, paths: RunPaths, val_index: CocoIndex):
    """The run's TensorBoard writer and the validation images it draws, when train.tensorboard is on."""
    if not cfg.train.tensorboard:
        return None
    from .tensorboard import DRAWN_IMAGES, RunBoard

    images = [(torch.from_numpy(read_image(r.path, cfg.data.bit_depth)).permute(2, 0, 1), r.id) for r in val_index.images[:DRAWN_IMAGES]]
    return RunBoard(paths.tensorboard), images


def _restore(resume, model, optimizer, scheduler, scaler, last: Path, w: distributed.World) -> _TrainState:
    model.load_state_dict(resume["model"])
    try:
        optimizer.load_state_dict(resume["optimizer"])
    except ValueError:  # parameter groups of another shape: written before groups were split
        raise TrainingError(f"{last}: its optimizer state has other parameter groups than this version of "
                            "detector makes, so the run cannot be resumed exactly; start it over (--force) or "
                            "use another output folder") from None
    scheduler.load_state_dict(resume["scheduler"])
    scaler.load_state_dict(resume["scaler"])
    ranks = resume.get("rng_ranks") or []
    set_rng_state(ranks[w.rank] if len(ranks) == w.size else resume["rng"])
    return _TrainState(**resume["train_state"])


def _anchor_info(resume, anchor_fit, run: Path, log, write: bool = True) -> dict[str, Any] | None:
    path = RunPaths(run).anchors
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


def _evaluate(model, loader, gt, label_map, cfg: Config, device, precision: Precision, progress,
              w: distributed.World):
    predictions = predict(model, loader, device=device, precision=precision, progress=progress, desc="validate")
    results = to_coco_results(predictions, label_map)
    if w.active:  # each rank predicted its shard of the validation images
        results = sorted((r for part in distributed.gather(w, results) for r in part), key=lambda r: r["image_id"])
    metrics = evaluate_detections(gt, results, score_threshold=None,  # selection: at this split's best threshold
                                  iou_threshold=cfg.eval.iou_threshold, score=cfg.score)
    return metrics, results


def _write_summary(run: Path, result: FitResult) -> None:
    summary = {"best_epoch": result.best_epoch, "best_metrics": result.best_metrics,
               "best_checkpoint": str(result.best_path) if result.best_path else None,
               "epochs_run": result.epochs_run, "stopped_early": result.stopped_early, "anchors": result.anchors,
               "train_images": result.train_images}
    write_json(RunPaths(run).summary, summary)
