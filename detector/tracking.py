"""MLflow tracking (`--mlflow URI`, or MLFLOW_TRACKING_URI as MLflow users already set it).

A study is an MLflow experiment; each trial is a run with its parameters and value; each fold, and each
refit member of the published ensemble, is a nested run with the metrics.csv columns per epoch, its resolved
config and metrics.csv as artifacts; the run `published` holds the published ensemble's held-out and test
scores. `detector train` and `detector cv` log one run (a cv run's folds and members nested under it) to the
experiment MLFLOW_EXPERIMENT_NAME names, `detector` by default.

Every run carries a key (`detector.key`: its folder, relative to the study or absolute for a single run), and
an existing run with that key is continued: a resumed study, trial or fold adds its remaining epochs to the
run it started, never a second run. Only the process that writes files logs (rank 0 under torchrun).
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError, hide_password
from .training.callbacks import LOG, Callback, FitState

KEY_TAG = "detector.key"
DEFAULT_EXPERIMENT = "detector"


def tracking_uri(flag: str | None) -> str | None:
    """The tracking server to log to: the flag, else MLFLOW_TRACKING_URI, else none (no tracking)."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or None


def ended_status(error: BaseException, *stopped: type) -> str:
    """The MLflow status of a run its `error` ended: KILLED for Ctrl-C, SIGTERM and the kinds in `stopped` (a
    pruned trial), FAILED for any other exception."""
    return "KILLED" if isinstance(error, stopped) or not isinstance(error, Exception) else "FAILED"


@dataclass
class Tracker:
    """One experiment on one tracking server, through MLflow's client (no global active run).

    Once connected, the server going away never stops training: the first call that fails (after MLflow's
    own retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES) prints one warning and tracking stops for this process; the
    run's files hold everything, and the same command started again sends the epochs the server missed."""

    client: Any  # mlflow.MlflowClient
    experiment_id: str
    uri: str
    log: Callable[[str], None] = print
    down: bool = False

    def safe(self, call: Callable[..., Any], *args: Any, default: Any = None, **kwargs: Any) -> Any:
        """call(*args, **kwargs), or `default` once the server has failed (warned once)."""
        if self.down:
            return default
        try:
            return call(*args, **kwargs)
        except Exception as e:  # MlflowException, requests' errors: the server, not the training
            self.down = True
            self.log(f"warning: MLflow at {hide_password(self.uri)} failed ({type(e).__name__}: {str(e)[:300]}); "
                     "tracking stops here, training goes on (its files hold everything)")
            return default

    @classmethod
    def connect(cls, uri: str, experiment: str, log: Callable[[str], None] = print) -> "Tracker":
        """Reach the server and open (or create) the experiment; a ConfigError naming the fix if it cannot,
        before anything trains."""
        try:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise ConfigError('--mlflow needs the mlflow package: pip install -e ".[mlflow]"; or leave --mlflow '
                              "out (and unset MLFLOW_TRACKING_URI)") from None
        if uri.startswith(("http://", "https://")):
            _probe(uri)
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment '{experiment}' at {hide_password(uri)} is deleted; restore it in "
                                  "MLflow or use another study name")
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        except MlflowException as e:
            raise ConfigError(f"MLflow at {hide_password(uri)}: {e.message}") from None
        return cls(client, experiment_id, uri, log)

    def run(self, key: str, name: str, parent: str | None = None, params: Mapping[str, Any] | None = None) -> str:
        """The id of the run with this key, continued (status RUNNING), or a new one; `parent` nests it."""
        quote = '"' if "'" in key else "'"  # a folder named bob's-runs
        found = self.client.search_runs([self.experiment_id], max_results=1,
                                        filter_string=f"tags.`{KEY_TAG}` = {quote}{key}{quote}")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            logged = found[0].data.params
        else:
            tags = {KEY_TAG: key, **({"mlflow.parentRunId": parent} if parent else {})}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
            logged = {}
        from mlflow.entities import Param

        fresh = [Param(k, str(v)) for k, v in (params or {}).items() if k not in logged]
        if fresh:
            self.client.log_batch(run_id, params=fresh)
        return run_id

    def metrics(self, run_id: str, values: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if _numeric(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def artifacts(self, run_id: str, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(run_id, str(path))

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def _probe(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            answer.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConfigError(f"MLflow server {hide_password(uri)} is unreachable ({getattr(e, 'reason', e)}): start "
                          "it, fix --mlflow (or MLFLOW_TRACKING_URI), or leave it out") from None


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # NaN too: MLflow stores it


class FitRuns(Callback):
    """One nested MLflow run per fit it joins (each fold of a cv run, each refit member), keyed by the fit's
    folder relative to `base`: per-epoch metrics, then the resolved config and metrics.csv."""

    stage, writes = LOG, True

    def __init__(self, tracker: Tracker, parent: str | None, base: Path, key_prefix: str = ""):
        self.tracker, self.parent, self.base, self.key_prefix = tracker, parent, base, key_prefix
        self.run_id: str | None = None

    def on_fit_start(self, state: FitState) -> None:
        name = state.paths.root.resolve().relative_to(self.base.resolve()).as_posix()
        t = self.tracker
        self.run_id = t.safe(t.run, self.key_prefix + name, name, self.parent)
        if self.run_id is None:
            return
        logged = t.safe(t.logged_steps, self.run_id, "loss", default=set())
        for row in state.progress.history:  # epochs a killed process finished but did not log
            if int(row["epoch"]) not in logged:
                t.safe(t.metrics, self.run_id, _columns(row), int(row["epoch"]))

    def on_epoch_end(self, state: FitState) -> None:
        if self.run_id is not None:
            self.tracker.safe(self.tracker.metrics, self.run_id, _columns(state.row), state.epoch)

    def on_fit_end(self, state: FitState) -> None:
        if self.run_id is not None:
            self.tracker.safe(self.tracker.artifacts, self.run_id, [state.paths.config, state.paths.metrics])
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """End this fit's run with `status` (FINISHED; KILLED or FAILED for one that stopped early)."""
        if self.run_id is not None:
            self.tracker.safe(self.tracker.end, self.run_id, status)
            self.run_id = None


def _columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.csv's numeric columns, as MLflow metrics (the epoch is the step)."""
    return {k: v for k, v in row.items() if k != "epoch" and _numeric(v)}


class TrialRun:
    """A study trial's MLflow run (keyed by the trial's folder, so a retried trial continues it) and the
    nested runs of its folds."""

    def __init__(self, tracker: Tracker, study_dir: Path, key: str, params: Mapping[str, Any]):
        self.tracker = tracker
        self.run_id = tracker.safe(tracker.run, key, key, params=params)
        self.fits = FitRuns(tracker, self.run_id, study_dir)

    def finished(self, values: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            self.tracker.safe(self.tracker.metrics, self.run_id, values)
        self.stopped("FINISHED")

    def stopped(self, status: str) -> None:
        """A finished, pruned (KILLED) or failed (FAILED) trial: its open fold run and itself end so."""
        self.fits.close(status)
        if self.run_id is not None:
            self.tracker.safe(self.tracker.end, self.run_id, status)


class StudyTracking:
    """A study's MLflow experiment: its trials' runs, and the run `published` that holds the refit members
    (nested) and the published ensemble's held-out and test scores."""

    PUBLISHED = "published"

    def __init__(self, tracker: Tracker, directory: Path):
        self.tracker, self.directory = tracker, directory
        self.published_run: str | None = None

    def trial(self, key: str, params: Mapping[str, Any]) -> TrialRun:
        return TrialRun(self.tracker, self.directory, key, params)

    def refit_callbacks(self) -> list[Callback]:
        return [FitRuns(self.tracker, self._published(), self.directory)]

    def published(self, heldout: Mapping[str, float], test: Mapping[str, float], files: list[Path]) -> None:
        """The published ensemble's scores: `heldout_*` on data.val, `test_*` on data.test."""
        t, run_id = self.tracker, self._published()
        if run_id is None or t.safe(t.logged_steps, run_id, "heldout_map", default={0}):
            return  # the server is down, or a rerun of a finished study (or another worker) logged them
        t.safe(t.metrics, run_id, {**{f"heldout_{k}": v for k, v in heldout.items()},
                                   **{f"test_{k}": v for k, v in test.items()}})
        t.safe(t.artifacts, run_id, files)
        t.safe(t.end, run_id)

    def _published(self) -> str | None:
        if self.published_run is None:
            self.published_run = self.tracker.safe(self.tracker.run, self.PUBLISHED, self.PUBLISHED)
        return self.published_run


@contextmanager
def tracked_run(uri: str | None, out: str | Path, *, nested: bool, main: bool = True,
                log: Callable[[str], None] = print) -> Iterator[list[Callback]]:
    """The callbacks that log `detector train` (nested=False: the fit is the run) or `detector cv` (nested=True:
    a run for the whole folder, its folds and refit members nested) to MLFLOW_EXPERIMENT_NAME (default
    `detector`), keyed by the folder's absolute path; none without a URI or off rank 0."""
    if uri is None or not main:
        yield []
        return
    tracker = Tracker.connect(uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT, log)
    root = Path(out).resolve()
    parent = tracker.safe(tracker.run, root.as_posix(), root.name) if nested else None
    base = root if nested else root.parent
    fits = FitRuns(tracker, parent, base, key_prefix=f"{base.as_posix().rstrip('/')}/")
    try:
        yield [fits]
    except BaseException as e:
        status = ended_status(e)
        fits.close(status)
        if parent is not None:
            tracker.safe(tracker.end, parent, status)
        raise
    if parent is not None:
        tracker.safe(tracker.end, parent)
