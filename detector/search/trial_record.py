"""What a trial records in the study beside Optuna's own fields: the attribute names in one place, and the
TrialRecord they are read back as."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from ..layout import trial_folder

RUN_DIR = "run_dir"  # the trial's folder in the study, kept by a retried trial
CV_MEAN = "cv_mean"  # fold-mean metrics
CV_STD = "cv_std"
BEST_EPOCHS = "best_epochs"  # each fold's best epoch (0-based)
FOLD_EPOCHS = "fold_epochs"  # each fold's best epoch, epochs run and early stop: the refit's epochs, from the storage
UPLOADED = "uploaded"  # with --artifacts: the trial folder's files in the artifact store (search/mirror.py)
WORKER = "worker"  # host, node, pid and start time of the process running it
FAIL_REASON = "fail_reason"  # the error a failed trial ended with (absent: its worker died, so it is retried)
SECONDS = "seconds"
START = "start"  # the enqueued starting point (the config's own values)
LATENCY_MS = "latency_ms"  # a two-objective study's second value: ms per image (search/latency.py)
RETRY_OF = "failed_trial"  # Optuna's system attribute on a retried trial


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_dir: str
    start: bool = False
    cv_mean: dict[str, float] | None = None
    cv_std: dict[str, float] | None = None
    best_epochs: list[int] | None = None
    seconds: float | None = None
    fail_reason: str | None = None
    retry_of: int | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None

    @classmethod
    def of(cls, t: optuna.trial.FrozenTrial) -> "TrialRecord":
        a = t.user_attrs
        return cls(t.number, t.state.name, score_of(t), t.params, a.get(RUN_DIR, trial_folder(t.number)),
                   bool(a.get(START)), a.get(CV_MEAN), a.get(CV_STD), a.get(BEST_EPOCHS), a.get(SECONDS),
                   a.get(FAIL_REASON), t.system_attrs.get(RETRY_OF), a.get(WORKER) or {}, latency_of(t))

    @property
    def failed_with_error(self) -> bool:
        """Failed with an error of its own (not retried), as opposed to failed because its worker died."""
        return self.state == TrialState.FAIL.name and self.fail_reason is not None

    @property
    def finished(self) -> bool:
        return self.state in (TrialState.COMPLETE.name, TrialState.PRUNED.name) or self.failed_with_error

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "worker"}


def score_of(t: optuna.trial.FrozenTrial) -> float | None:
    """The trial's fold-mean score: its value, or its first value in a two-objective study."""
    return t.values[0] if t.values else None


def latency_of(t: optuna.trial.FrozenTrial) -> float | None:
    """Its ms per image in a two-objective study (its second value), else None."""
    return t.values[1] if t.values and len(t.values) > 1 else t.user_attrs.get(LATENCY_MS)
