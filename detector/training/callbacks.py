"""What fit() does besides training and evaluating: each feature is a Callback that sees the FitState.

fit() calls, in stage order (a stable sort of its list by the stage constants below): `on_fit_start` once (after a resume
restored the state), `on_epoch_start` and `after_step` (every optimizer step) while training,
`on_epoch_end` after each evaluation, and `on_fit_end` once when the epochs are done. A callback with a
`key` has its `state_dict()` saved in last.pt and handed back to `load_state_dict` on resume, so a resumed
run continues exactly. A callback that `writes` files is registered on rank 0 only (distributed.py).
A new integration (a logger, a profiler) is one new class here, not a new argument of fit().
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from timm.utils import ModelEmaV3

from .. import distributed
from ..checkpoint import Checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..top_models import TopK
from ..config import Config
from ..data.coco import CocoIndex
from ..data.dataset import CocoDetection
from ..data.images import read_image
from ..data.summary import aspect_warning, crowding_warning
from ..data.transforms import build_train_transforms, pipeline_dict
from ..errors import TrainingError
from ..files import read_json, write_json
from ..layout import RunPaths
from .metric_log import CSV_COLUMNS, append_row, rewrite_rows
from ..metrics import Metrics
from ..models.anchors import AnchorFit
from ..models.spec import ModelSpec

# The order of the stages, and why it is this order:
MODEL = 0  # change what is trained or evaluated (EMA, image size) before anything reads it
ROW = 1  # complete the epoch's row and decisions (fold column, early stopping) before anything is written
SAVE = 2  # model files (best.pt, top-k, a refit's model.pt) before last.pt: a resume that finds last.pt
#           after this epoch finds every file it lists
RESUME = 3  # last.pt: the state of everything above, so a kill after it loses nothing
LOG = 4  # metrics.csv, TensorBoard and the console after last.pt: a resume rewrites the log from it
CONTROL = 5  # hooks that may raise to stop the run (Optuna's pruning): the epoch is fully written by then


@dataclass
class Progress:
    """What the epochs so far decided: saved in last.pt as train_state."""

    next_epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    best_metrics: Metrics | None = None
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, epoch: int, metrics: Metrics) -> bool:
        """Record an evaluated epoch; True when its score is the best so far (a NaN score never is)."""
        self.next_epoch = epoch + 1
        score = metrics.score
        if math.isfinite(score) and score > self.best_score:
            self.best_epoch, self.best_score, self.best_metrics = epoch, score, metrics
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_metrics": self.best_metrics.to_dict() if self.best_metrics else {},
                "stopped_early": self.stopped_early, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Progress":
        best = d.get("best_metrics")
        return cls(int(d.get("next_epoch", 0)), int(d.get("best_epoch", -1)), float(d.get("best_score", -math.inf)),
                   Metrics.from_dict(best) if best else None, bool(d.get("stopped_early", False)),
                   list(d.get("history", [])))


@dataclass
class FitState:
    """One fit's moving parts, as every callback sees them."""

    cfg: Config
    paths: RunPaths
    world: distributed.World
    model: torch.nn.Module  # the weights the optimizer steps
    trained: torch.nn.Module  # what the forward pass calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_set: CocoDetection
    val_index: CocoIndex  # data.val, or the fold's validation images
    gt: dict[str, Any]  # the same in COCO form
    spec: ModelSpec  # what rebuilding the model needs: config, label map, anchors, image size, ...
    log: Callable[[str], None]
    callbacks: Sequence["Callback"] = ()
    evaluated: torch.nn.Module | None = None  # what is validated, kept and predicted with (None: the model)
    progress: Progress = field(default_factory=Progress)
    image_size: int = 0
    anchor_fit: AnchorFit | None = None  # anchors fitted by this fit (None: defaults, or a resumed run's)
    fold: int | None = None
    columns: tuple[str, ...] = CSV_COLUMNS
    epoch: int = -1
    metrics: Metrics | None = None  # of the epoch just validated
    results: list[dict[str, Any]] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)
    improved: bool = False

    @property
    def kept(self) -> torch.nn.Module:
        return self.evaluated if self.evaluated is not None else self.model

    def snapshot(self) -> Checkpoint:
        """The evaluated weights of this epoch as a model file."""
        return Checkpoint.of(self.spec, self.kept.state_dict(), epoch=self.epoch,
                             metrics=self.metrics.to_dict() if self.metrics else {})

    @contextlib.contextmanager
    def timed(self, column: str) -> Iterator[None]:
        """Add the seconds the block takes to the row's `column` and to its total."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.row[column] = self.row.get(column, 0.0) + seconds
        self.row["seconds"] = self.row.get("seconds", 0.0) + seconds


@dataclass
class FitResult:
    """What a fit ended with; summary.json holds it."""

    best_epoch: int
    best_metrics: Metrics | None
    best_path: Path | None
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    anchors: dict[str, Any] | None = None
    train_images: int = 0

    @classmethod
    def of(cls, state: FitState) -> "FitResult":
        p, best, anchors = state.progress, state.paths.best, state.paths.anchors
        return cls(best_epoch=p.best_epoch, best_metrics=p.best_metrics, best_path=best if best.exists() else None,
                   epochs_run=len(p.history), stopped_early=p.stopped_early, history=p.history,
                   anchors=read_json(anchors) if anchors.exists() else None,
                   train_images=len(state.train_set.index.images))

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_metrics": self.best_metrics.to_dict() if self.best_metrics else {},
                "best_checkpoint": str(self.best_path) if self.best_path else None, "epochs_run": self.epochs_run,
                "stopped_early": self.stopped_early, "anchors": self.anchors, "train_images": self.train_images}


class Callback:
    """A feature of fit(). Override what it needs; `stage` places it (MODEL ... CONTROL), `key` names its saved state,
    `writes` keeps it on rank 0."""

    stage = ROW
    key = ""
    writes = False

    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def after_step(self, state: FitState) -> None: ...
    def on_epoch_end(self, state: FitState) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...

    def state_dict(self) -> Any:
        return {}

    def load_state_dict(self, state: Any) -> None: ...


def ordered(callbacks: Sequence[Callback], w: distributed.World) -> list[Callback]:
    """The callbacks this rank runs, in stage order (stable: the same stage keeps the given order)."""
    return sorted((c for c in callbacks if w.main or not c.writes), key=lambda c: c.stage)


def standard(cfg: Config) -> list[Callback]:
    """The callbacks the config asks for, in every fit."""
    out: list[Callback] = []
    if cfg.train.ema:
        out.append(Ema(cfg.train.ema_decay))
    if cfg.train.progressive.start_size:
        out.append(ProgressiveResize())
    if cfg.train.patience > 0:
        out.append(EarlyStopping(cfg.train.patience, cfg.train.min_epochs))
    out += [DataWarnings(), RunFiles(), BestPredictions(), ResumeFile(), CsvLog()]
    if cfg.train.tensorboard:
        out.append(TensorBoard())
    return out + [EpochLine()]


class Ema(Callback):
    """Evaluate, keep and predict with an exponential moving average of the weights (timm's ModelEmaV3)."""

    stage, key = MODEL, "ema"

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: ModelEmaV3 | None = None

    def on_fit_start(self, state: FitState) -> None:
        self.ema = ModelEmaV3(state.model, decay=self.decay, use_warmup=True)
        state.evaluated = self.ema.module

    def after_step(self, state: FitState) -> None:
        self.ema.update(state.model, step=state.scheduler.last_epoch)

    def state_dict(self) -> Any:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.ema.module.load_state_dict(state)


def image_size_at(cfg: Config, epoch: int) -> int:
    p = cfg.train.progressive
    return p.start_size if p.start_size and epoch < p.epochs else cfg.data.image_size


class ProgressiveResize(Callback):
    """train.progressive: the first epochs train at start_size, the rest at data.image_size."""

    stage = MODEL

    def on_epoch_start(self, state: FitState) -> None:
        state.image_size = image_size_at(state.cfg, state.epoch)
        state.train_set.pipeline = build_train_transforms(state.cfg.data.augment, state.image_size)


class DataWarnings(Callback):
    """Crowded images (more boxes than model.max_detections) and elongated ones, in either split."""

    writes = True

    def on_fit_start(self, state: FitState) -> None:
        cfg = state.cfg
        for index in (state.train_set.index, state.val_index):
            for warning in (crowding_warning(index, cfg.model.max_detections), aspect_warning(index, cfg.data.image_size)):
                if warning:
                    state.log(f"warning: {warning}")


class RunFiles(Callback):
    """augment.json (the pipeline trained with, in Albumentations' own form), anchors.json (the k-means fit
    against the defaults) and, at the end, summary.json."""

    stage, writes = LOG, True

    def on_fit_start(self, state: FitState) -> None:
        write_json(state.paths.augment, pipeline_dict(state.train_set.pipeline))
        fit = state.anchor_fit
        if fit is None:
            return
        write_json(state.paths.anchors, fit.to_dict())
        f, d = fit.fitted, fit.default
        state.log(f"anchors (k-means on {fit.num_boxes} boxes): mean IoU {f.mean_iou:.3f} vs default "
                  f"{d.mean_iou:.3f}; best possible recall {f.bpr:.3f} vs {d.bpr:.3f}"
                  + ("" if fit.used else "; torchvision's defaults kept (model.anchors auto)"))

    def on_fit_end(self, state: FitState) -> None:
        write_json(state.paths.summary, FitResult.of(state).summary())


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a better score (never before `min_epochs`)."""

    def __init__(self, patience: int, min_epochs: int):
        self.patience, self.min_epochs = patience, min_epochs

    def should_stop(self, progress: Progress, epoch: int) -> bool:
        return epoch + 1 >= self.min_epochs and epoch - progress.best_epoch >= self.patience

    def on_epoch_end(self, state: FitState) -> None:
        state.progress.stopped_early = self.should_stop(state.progress, state.epoch)


class FoldColumn(Callback):
    """A k-fold run's fold number, in the state (for the callbacks that rank by fold) and in metrics.csv."""

    def __init__(self, fold: int):
        self.fold = fold

    def on_fit_start(self, state: FitState) -> None:
        state.fold = self.fold
        state.columns = ("fold", *state.columns)

    def on_epoch_end(self, state: FitState) -> None:
        state.row["fold"] = self.fold


class BestPredictions(Callback):
    """best_predictions.json: the validation predictions of the best epoch (out-of-fold tuning reads them)."""

    stage, writes = SAVE, True

    def on_epoch_end(self, state: FitState) -> None:
        if state.improved:
            write_json(state.paths.best_predictions, state.results, indent=None)


class BestCheckpoint(Callback):
    """best.pt: the model of the best epoch so far (a single run's published model)."""

    stage, writes = SAVE, True

    def on_epoch_end(self, state: FitState) -> None:
        if state.improved:
            with state.timed("checkpoint_seconds"):
                save_checkpoint(state.paths.best, state.snapshot())


class KeepTopK(Callback):
    """refit.strategy folds: every epoch's model is offered to the run's TopK (ranked within its fold)."""

    stage, writes = SAVE, True

    def __init__(self, top: TopK):
        self.top = top

    def on_epoch_end(self, state: FitState) -> None:
        with state.timed("checkpoint_seconds"):
            self.top.offer(state.fold, state.epoch, state.metrics, lambda path: save_checkpoint(path, state.snapshot()))


class FinalModel(Callback):
    """A refit member: the model of the last epoch, as `path`."""

    stage, writes = SAVE, True

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch == state.cfg.train.epochs - 1:
            with state.timed("checkpoint_seconds"):
                save_checkpoint(self.path, state.snapshot())


class ResumeFile(Callback):
    """last.pt: everything a resume needs. Every rank takes part (each one's RNG state is gathered, so a
    resumed rank draws what it would have); rank 0 writes. `read` and `restore` are the way back."""

    stage = RESUME

    @staticmethod
    def read(paths: RunPaths) -> Checkpoint | None:
        return load_checkpoint(paths.last) if paths.last.exists() else None

    @staticmethod
    def restore(state: FitState, resume: Checkpoint) -> None:
        """The model, optimizer, schedule, scaler, this rank's RNG and the Progress (before on_fit_start)."""
        state.model.load_state_dict(resume.model)
        try:
            state.optimizer.load_state_dict(resume.optimizer)
        except ValueError:  # parameter groups of another shape: written before groups were split
            raise TrainingError(f"{state.paths.last}: its optimizer state has other parameter groups than this "
                                "version of detector makes, so the run cannot be resumed exactly; start it over "
                                "(--force) or use another output folder") from None
        state.scheduler.load_state_dict(resume.scheduler)
        state.scaler.load_state_dict(resume.scaler)
        w = state.world
        set_rng_state(resume.rng_ranks[w.rank] if len(resume.rng_ranks) == w.size else resume.rng)
        state.progress = Progress.from_dict(resume.train_state)

    @staticmethod
    def restore_callbacks(state: FitState, resume: Checkpoint) -> None:
        """Each callback's saved state (after on_fit_start made it)."""
        for c in state.callbacks:
            if c.key in resume.callbacks:
                c.load_state_dict(resume.callbacks[c.key])
        root = state.paths.root
        state.log(f"{root}: stopped early after epoch {resume.epoch}; nothing left to train"
                  if state.progress.stopped_early else f"resuming {root} after epoch {resume.epoch}")

    def on_epoch_end(self, state: FitState) -> None:
        w = state.world
        rngs = distributed.gather(w, rng_state())
        if not w.main:
            return
        with state.timed("checkpoint_seconds"):
            save_checkpoint(state.paths.last, replace(
                state.snapshot(), model=state.model.state_dict(), optimizer=state.optimizer.state_dict(),
                scheduler=state.scheduler.state_dict(), scaler=state.scaler.state_dict(), rng=rngs[0],
                rng_ranks=rngs if w.active else [], train_state=state.progress.to_dict(),
                callbacks={c.key: c.state_dict() for c in state.callbacks if c.key}))


class CsvLog(Callback):
    """metrics.csv: one row per epoch; on resume it holds exactly the epochs last.pt has."""

    stage, writes = LOG, True

    def on_fit_start(self, state: FitState) -> None:
        rewrite_rows(state.paths.metrics, state.progress.history, state.columns)

    def on_epoch_end(self, state: FitState) -> None:
        append_row(state.paths.metrics, state.row, state.columns)


class TensorBoard(Callback):
    """train.tensorboard: RUN/tensorboard event files (tensorboard.py)."""

    stage, writes = LOG, True

    def on_fit_start(self, state: FitState) -> None:
        from ..tensorboard import DRAWN_IMAGES, RunBoard

        self.board = RunBoard(state.paths.tensorboard)
        depth = state.cfg.data.bit_depth
        self.images = [(torch.from_numpy(read_image(r.path, depth)).permute(2, 0, 1), r.id)
                       for r in state.val_index.images[:DRAWN_IMAGES]]
        labels = state.val_index.label_map
        self.names = dict(zip(labels.category_ids, labels.names))

    def on_epoch_end(self, state: FitState) -> None:
        self.board.epoch(state.epoch, state.row, state.improved, state.gt, state.results, self.names, self.images,
                         state.cfg.eval.score_threshold)

    def on_fit_end(self, state: FitState) -> None:
        self.board.close()


class EpochLine(Callback):
    """The console: one line per epoch."""

    stage, writes = LOG, True

    def on_epoch_end(self, state: FitState) -> None:
        r, m = state.row, state.metrics
        state.log(f"epoch {state.epoch}: loss {r['loss']:.4f}  map_50 {m.map_50:.4f}  f1 {m.f1:.4f}  "
                  f"score {m.score:.4f}  ({r['seconds']:.1f}s)")
        if r.get("skipped_steps"):
            state.log(f"  the fp16 loss scaler skipped {r['skipped_steps']} steps with non-finite gradients "
                      "(normal in the first steps while it finds its scale)")
        if state.progress.stopped_early:
            state.log(f"early stop: no better score for {state.cfg.train.patience} epochs")


class EpochEnd(Callback):
    """Calls fn(epoch, metrics) after each epoch is written; fn may raise to stop the run."""

    stage = CONTROL

    def __init__(self, fn: Callable[[int, Metrics], None]):
        self.fn = fn

    def on_epoch_end(self, state: FitState) -> None:
        self.fn(state.epoch, state.metrics)
