"""The one exception family for user errors: the CLI prints these without a traceback (exit code 2)."""
from __future__ import annotations

import re


class DetectorError(Exception):
    """A problem the user can fix: a bad config, dataset, weight file or argument."""


class ConfigError(DetectorError):
    """A config file or override that does not fit the schema."""


class DatasetError(DetectorError):
    """A dataset that cannot be used as it is."""


class WeightsError(DetectorError):
    """Pretrained or checkpoint weights that cannot be found or loaded."""


class StorageError(DetectorError):
    """A state file could not be written (full disk, read-only folder); what was written before is intact."""


class ArtifactStoreError(DetectorError):
    """A study's artifact store (an S3 bucket or a folder) that cannot be reached, read or written."""


class TrainingError(DetectorError):
    """Training cannot go on (for example a non-finite loss)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; carries where it happened."""

    def __init__(self, epoch: int, batch: int, losses: dict[str, float]):
        self.epoch, self.batch, self.losses = epoch, batch, losses
        parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        super().__init__(
            f"non-finite loss at epoch {epoch}, batch {batch} ({parts}); "
            "lower train.lr, enable train.grad_clip, or check the boxes with `detector check-data`"
        )


def hide_password(url: str) -> str:
    """`url` as a message or a file may show it: scheme://user:***@host... (a storage, a tracking server)."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
