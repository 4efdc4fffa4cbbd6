"""Range and consistency checks of a loaded config (types are checked while loading, in typed_yaml.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config


def published_members(cfg: Config) -> int:
    """How many models a cv run or a study publishes (and WBF fuses)."""
    return cfg.cv.folds * cfg.cv.top_k if cfg.refit.strategy == "folds" else cfg.refit.members


def check_ranges(cfg: Config, source: str) -> None:
    """Values of the right type that would crash a run or do nothing: one ConfigError naming the key."""
    checks = [
        (cfg.data.image_size >= 32, "data.image_size must be at least 32"),
        (8 <= cfg.data.bit_depth <= 16, "data.bit_depth must lie in 8..16 (the bits a 16-bit file's pixels use)"),
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (cfg.train.backbone_lr_mult > 0, "train.backbone_lr_mult must be positive (freeze layers with "
                                         "model.trainable_layers)"),
        (0.0 <= cfg.eval.score_threshold <= 1.0, "eval.score_threshold must lie in [0, 1]"),
        (0.0 < cfg.eval.iou_threshold <= 1.0, "eval.iou_threshold must lie in (0, 1]"),
        (cfg.model.anchors_per_level >= 1, "model.anchors_per_level must be at least 1"),
        (cfg.cv.folds >= 2, "cv.folds must be at least 2"),
        (cfg.cv.top_k >= 1, "cv.top_k must be at least 1"),
        (0 < cfg.data.augment.scale[0] <= cfg.data.augment.scale[1],
         "data.augment.scale must be [low, high] with 0 < low <= high"),
        (cfg.train.num_workers >= 0, "train.num_workers must be 0 (load in the main process) or more"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be at least 1"),
        (cfg.model.max_detections >= 1, "model.max_detections must be at least 1"),
        (0.0 <= cfg.ensemble.skip_box_thr <= 1.0, "ensemble.skip_box_thr must lie in [0, 1]"),
        (cfg.ensemble.weights is None or all(w >= 0 for w in cfg.ensemble.weights) and sum(cfg.ensemble.weights) > 0,
         "ensemble.weights must be non-negative with a positive sum"),
        (cfg.search.n_trials >= 1, "search.n_trials must be at least 1"),
        (cfg.search.timeout >= 0, "search.timeout (--timeout) must be 0 (none) or a number of seconds"),
        (cfg.search.heartbeat_seconds >= 1, "search.heartbeat_seconds must be at least 1"),
        (cfg.search.grace_seconds > cfg.search.heartbeat_seconds,
         "search.grace_seconds must be longer than search.heartbeat_seconds"),
        (0.0 < cfg.ensemble.iou_thr <= 1.0, "ensemble.iou_thr must lie in (0, 1]"),
        (cfg.ensemble.weights is None or len(cfg.ensemble.weights) == published_members(cfg),
         f"ensemble.weights needs one weight per published model ({published_members(cfg)}: refit.members, or "
         "cv.folds x cv.top_k with refit.strategy folds), or null for equal weights"),
        (cfg.refit.members >= 1, "refit.members must be at least 1"),
        (cfg.refit.epochs >= 0, "refit.epochs must be 0 (the epochs the folds chose) or more"),
        (cfg.train.progressive.start_size == 0 or cfg.train.progressive.start_size >= 32,
         "train.progressive.start_size must be 0 (off) or at least 32"),
        (0.0 < cfg.train.ema_decay < 1.0, "train.ema_decay must lie in (0, 1), e.g. 0.999"),
        (cfg.score.beta > 0, "score.beta must be positive (1 = F1, 2 = recall-first)"),
        (0.0 <= cfg.model.focal_alpha <= 1.0, "model.focal_alpha must lie in [0, 1]"),
        (cfg.model.focal_gamma >= 0, "model.focal_gamma must be 0 or more"),
        (not isinstance(cfg.model.class_weights, str) or cfg.model.class_weights == "auto",
         "model.class_weights must be null, auto or a list with one positive weight per class"),
        (not isinstance(cfg.model.class_weights, list) or all(w > 0 for w in cfg.model.class_weights),
         "model.class_weights must be null, auto or a list with one positive weight per class"),
        (cfg.tune.min_class_boxes >= 1, "tune.min_class_boxes must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
