"""What a config needs of this machine and of its transforms, checked before a run folder or a study records
anything: a config that would fail once training starts fails here, so the fixed config is not refused as a
change of the run it broke."""
from __future__ import annotations

from . import tensorboard
from .config import Config
from .data.transforms import check_pipeline


def check(cfg: Config) -> None:
    """One ConfigError naming the key and the fix, or nothing."""
    check_pipeline(cfg.data.augment, cfg.data.image_size)
    if cfg.train.tensorboard:
        tensorboard.check_available()
