"""Optuna studies: each trial is a k-fold run scored by the WBF ensemble of its top models on held-out data.

The only module that imports optuna. STUDY/ (studies/NAME) holds study.json (name and storage URL),
config.yaml (the study's config), study.db (the default SQLite storage), trial_NNNN/ (one `cv` run
directory per trial, plus heldout.json) and best/ (the best trial's models and ensemble settings).

Several `detector study` processes may share one study through a PostgreSQL storage: trials are claimed
under a lock (a PostgreSQL advisory lock, or a file lock for SQLite) so that together they run exactly
search.n_trials trials; a trial whose worker died (heartbeat gone, or its process gone on this host) is
failed and retried with the same parameters in the same folder.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import shutil
import socket
import threading
import time
import traceback
import warnings
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import psutil
from filelock import FileLock
from optuna.trial import TrialState

from . import config as config_mod
from .checkpoint import load_checkpoint
from .config import Config, SearchConfig
from .cv import run_cv
from .data.coco import CocoIndex
from .ensemble import Ensemble
from .errors import ConfigError, DetectorError
from .files import read_json, write_json
from .predict import ground_truth_metrics, run_predictions
from .report import read_metric_rows
from .runs import RESUMABLE_CHANGES
from .train import load_splits

METRIC_KEYS = ("map", "map_50", "map_75", "precision", "recall", "f1", "score")

# ---------------------------------------------------------------------------------------------- space

def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one value per searched config key: a list is categorical, {low, high, log, step} a range."""
    return {key: _suggest_one(trial, key, spec) for key, spec in space.items()}


def check_space(cfg: Config) -> None:
    """Every search.space entry names a config key and every value it can draw fits that key: checked before
    a study records anything, so a typo fails at once instead of failing every trial."""
    for key, spec in cfg.search.space.items():
        probe = _SpaceProbe()
        _suggest_one(probe, key, spec)
        for value in probe.values:
            try:
                config_mod.with_values(cfg, {key: value}, source="search.space")
            except ConfigError as e:
                raise ConfigError(f"search.space.{key}: the value {value!r} does not fit ({e})") from None


class _SpaceProbe:
    """Stands in for a trial: records the values a search spec can draw at its ends."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.values = list(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.values = [low, high]
        return low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        self.values = [low, high]
        return low


def _suggest_one(trial: optuna.trial.BaseTrial, key: str, spec: Any) -> Any:
    where = f"search.space.{key}"
    try:
        tp = config_mod.field_type(key)
    except ConfigError:
        raise ConfigError(f"{where}: '{key}' is not a config key; search keys are dotted config keys "
                          "such as train.lr or model.backbone") from None
    if isinstance(spec, list):
        if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise ConfigError(f"{where}: a categorical search needs a non-empty list of plain values")
        return trial.suggest_categorical(key, spec)
    if not isinstance(spec, dict) or not {"low", "high"} <= spec.keys() or set(spec) - {"low", "high", "log", "step"}:
        raise ConfigError(f"{where}: give a list of choices or {{low, high}} with optional log and step; got {spec!r}")
    low, high = config_mod.numeric(spec["low"]), config_mod.numeric(spec["high"])
    log, step = bool(spec.get("log", False)), config_mod.numeric(spec.get("step"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ConfigError(f"{where}: low and high must be numbers with low <= high; got {low!r}, {high!r}")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if tp is int:
        return trial.suggest_int(key, int(low), int(high), step=int(step or 1), log=log)
    if tp is float:
        return trial.suggest_float(key, float(low), float(high), step=step, log=log)
    raise ConfigError(f"{where}: {key} is not a number; search it with a list of choices")


# ------------------------------------------------------------------------------------------ objective

@dataclass
class HeldOutResult:
    ensemble: dict[str, Any]
    members: list[dict[str, Any]]


class Objective:
    """One trial: suggest -> k-fold run (pruned on the fold-mean score) -> WBF ensemble on held-out data."""

    def __init__(self, cfg: Config, study_dir: str | Path, *, train_index: CocoIndex | None = None,
                 held_out: CocoIndex | None = None, progress: bool = False, log: Callable[[str], None] = print):
        self.cfg, self.study_dir, self.progress, self.log = cfg, Path(study_dir), progress, log
        if train_index is None or held_out is None:
            train_index, held_out = load_splits(cfg)
        check_held_out(train_index, held_out)
        self.train_index, self.held_out = train_index, held_out

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        params = suggest(trial, self.cfg.search.space)
        trial_cfg = config_mod.with_values(self.cfg, params, source=f"trial {trial.number} parameters")
        run = self.study_dir / trial.user_attrs.get("run_dir", trial_folder(trial.number))
        trial.set_user_attr("run_dir", run.name)
        self.log(f"trial {trial.number}: {_format_params(params)} -> {run}")
        hook = PruningHook(trial, run, trial_cfg.train.epochs)
        try:
            cv = run_cv(trial_cfg, run, on_epoch_end=hook, index=self.train_index, progress=self.progress,
                        log=lambda s: self.log(f"trial {trial.number}: {s}"))
        except optuna.TrialPruned:
            free_checkpoints(run)
            raise
        trial.set_user_attr("cv_mean", {k: cv.mean[k] for k in METRIC_KEYS})
        started = time.perf_counter()
        result = evaluate_held_out(trial_cfg, run, cv.top_models, self.held_out)
        trial.set_user_attr("heldout_seconds", round(time.perf_counter() - started, 3))
        write_json(run / "heldout.json", {"ensemble": result.ensemble, "members": result.members})
        trial.set_user_attr("ensemble", _plain_metrics(result.ensemble))
        trial.set_user_attr("members", [{**m, "metrics": _plain_metrics(m["metrics"])} for m in result.members])
        return float(result.ensemble["score"])


def trial_folder(number: int) -> str:
    return f"trial_{number:04d}"


class PruningHook:
    """on_epoch_end for run_cv: reports the running fold-mean score and raises TrialPruned when told to.

    At fold k, epoch e the value is the mean score at epoch e over folds 0..k, reported at step
    k * epochs + e, so every trial's value at a step averages the same folds and epoch.
    """

    def __init__(self, trial: optuna.trial.BaseTrial, run: Path, epochs: int):
        self.trial, self.run, self.epochs = trial, run, epochs
        self.scores: dict[tuple[int, int], float] = {}

    def __call__(self, fold: int, epoch: int, metrics: dict[str, Any]) -> None:
        if not any(f < fold for f, _ in self.scores):
            for row in read_metric_rows(self.run):  # folds finished before a resume
                if row.get("fold", fold) < fold:
                    self.scores[(int(row["fold"]), int(row["epoch"]))] = float(row["score"])
        self.scores[(fold, epoch)] = float(metrics["score"])
        values = [self.scores[(f, epoch)] for f in range(fold + 1) if (f, epoch) in self.scores]
        value = float(sum(values) / len(values))
        if not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a retried trial inherits the steps it reported before the kill
            warnings.filterwarnings("ignore", message=".*already reported")
            self.trial.report(value, fold * self.epochs + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch}: fold-mean score {value:.4f}")


def check_held_out(train_index: CocoIndex, held_out: CocoIndex) -> None:
    """The held-out split must share no image file with the training split and must have boxes."""
    train_files = {r.path.resolve() for r in train_index.images}
    shared = sorted(str(r.path) for r in held_out.images if r.path.resolve() in train_files)
    if shared:
        raise ConfigError(f"data.val ({held_out.path}) is the study's held-out split but shares {len(shared)} "
                          f"image files with data.train (e.g. {shared[0]}); point data.val at a split of its own")
    if not any(len(r.boxes) for r in held_out.images):
        raise ConfigError(f"data.val ({held_out.path}) has no boxes; the held-out split needs annotations")


def evaluate_held_out(cfg: Config, run: Path, top_models: list[dict[str, Any]], held_out: CocoIndex,
                      *, progress: bool = False) -> HeldOutResult:
    """Fuse the run's top models on the held-out split; metrics of the ensemble and of each member."""
    if not top_models:
        raise DetectorError(f"{run}: the run kept no model (every epoch scored NaN)")
    ensemble = Ensemble.from_checkpoints([run / m["path"] for m in top_models], cfg.ensemble, cfg.train.device)
    predictions = run_predictions(ensemble, [r.path for r in held_out.images], gt=held_out,
                                  batch_size=cfg.eval.batch_size, progress=progress, with_members=True)
    rows = ground_truth_metrics(predictions, held_out, cfg.eval.score_threshold, members=len(top_models),
                                iou_threshold=cfg.eval.iou_threshold, w_map=cfg.score.w_map, w_f1=cfg.score.w_f1)
    metrics = [m for _, m in rows]
    member_metrics = metrics[1:] if len(metrics) > 1 else metrics
    members = [{"path": m["path"], "fold": m["fold"], "epoch": m["epoch"], "cv_score": m["score"], "metrics": mm}
               for m, mm in zip(top_models, member_metrics)]
    return HeldOutResult(metrics[0], members)


def free_checkpoints(run: Path) -> None:
    """Delete a trial's checkpoints (top models and fold resume files); logs and summaries stay."""
    for path in [*run.glob("top/*.pt"), *run.glob("fold_*/last.pt")]:
        path.unlink(missing_ok=True)


def _plain_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(m[k]) for k in METRIC_KEYS if k in m}


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------- study

@dataclass
class StudyResult:
    directory: Path
    name: str
    states: dict[str, int]
    best_trial: int | None
    best_value: float | None


def run_study(cfg: Config, study_dir: str | Path, *, storage: str | None = None, progress: bool = False,
              log: Callable[[str], None] = print) -> StudyResult:
    """Run (or resume, or join) the study in `study_dir` until it has cfg.search.n_trials trials.

    Trials that end with an error count (recorded as failed with their reason); trials whose worker died
    are retried. `storage` is an Optuna RDB URL; default: SQLite in the study folder.
    """
    directory = Path(study_dir)
    check_space(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log lines say what optuna's INFO lines would
    objective = Objective(cfg, directory, progress=progress, log=log)  # validates the data first
    directory.mkdir(parents=True, exist_ok=True)
    url = _storage_url(directory, storage)
    lock = _StudyLock(url, directory, directory.name)
    with lock.held():  # workers starting together would race to create the storage's tables
        study, rdb = _open(directory, url, cfg.search)
        _check_config(study, cfg, directory)
        _record_storage(directory, url)
        sync_best(study, directory, cfg.search.keep_models)  # in case a worker died while updating best/
    config_mod.save(config_mod.resolve_paths(cfg), directory / "config.yaml")
    study_id = rdb.get_study_id_from_name(study.study_name)
    started = time.monotonic()
    while True:
        if cfg.search.timeout and time.monotonic() - started > cfg.search.timeout:
            log(f"timeout of {cfg.search.timeout:g} s reached; no new trial started")
            break
        with lock.held():
            trial, others_running = _claim(study, rdb, study_id, cfg.search)
        if trial is None and not others_running:
            break
        if trial is None:  # the budget is claimed; wait in case a running trial dies and must be retried
            time.sleep(min(2, cfg.search.heartbeat_seconds))
            continue
        _run_trial(study, rdb, rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number), trial,
                   objective, cfg.search, log)
        with lock.held():
            sync_best(study, directory, cfg.search.keep_models)
    return summarize(study, directory)


def summarize(study: optuna.Study, directory: Path) -> StudyResult:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    best = _best_trial(trials)
    return StudyResult(directory, study.study_name, states, best.number if best else None,
                       best.value if best else None)


def load_study(study_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """Open an existing study folder for reading."""
    directory = Path(study_dir)
    if not (directory / "study.json").exists():
        raise ConfigError(f"{directory}: not a study folder (no study.json); studies are made by `detector study`")
    url = _storage_url(directory, storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ConfigError(f"storage {url}: no such database file; check --storage (the study folder records "
                          f"{_recorded_storage(directory) or 'the default study.db'})")
    with _storage_errors(url):
        try:
            return optuna.load_study(study_name=directory.name, storage=url)
        except KeyError:
            raise ConfigError(f"storage {_masked(url)} holds no study named {directory.name!r}; check "
                              "--storage") from None


def _storage_url(directory: Path, given: str | None) -> str:
    """The storage a study uses: --storage, else the URL study.json records, else SQLite in the folder."""
    url = given or _recorded_storage(directory) or f"sqlite:///{(directory / 'study.db').resolve()}"
    _masked(url)  # a malformed URL fails here, without echoing its password
    if "***" in url:
        raise ConfigError(f"{directory}: the study's storage {url} needs its password; pass --storage URL")
    return url


def _recorded_storage(directory: Path) -> str | None:
    meta = directory / "study.json"
    return read_json(meta).get("storage") if meta.exists() else None


def _record_storage(directory: Path, url: str) -> None:
    """study.json names the storage (password masked); written only once the storage has opened."""
    if _recorded_storage(directory) != _masked(url):
        write_json(directory / "study.json", {"name": directory.name, "storage": _masked(url)})


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        raise ConfigError(f"--storage {_hide_password(url)!r} is not a database URL; use e.g. "
                          "postgresql://user:password@host:5432/db or sqlite:///path/study.db") from None


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """A storage that cannot be reached, refuses the login or lacks its driver: one ConfigError."""
    import sqlalchemy.exc

    try:
        yield
    except ImportError as e:
        raise ConfigError(f"storage {_masked(url)}: a database driver is missing ({e}); "
                          "for PostgreSQL: pip install 'psycopg[binary]'") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.ArgumentError) as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"storage {_masked(url)}: cannot connect ({first}); check the host, port, user, "
                          "password and database name") from None


def _open(directory: Path, url: str, search: SearchConfig) -> tuple[optuna.Study, Any]:
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with _storage_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=search.heartbeat_seconds,
            grace_period=search.grace_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=search.max_retries, inherit_intermediate_values=True))
    study = optuna.create_study(study_name=directory.name, storage=rdb, direction="maximize",
                                load_if_exists=True, sampler=_sampler(search, search.seed), pruner=_pruner(search))
    return study, rdb


def _sampler(search: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=search.warmup_epochs)


def _check_config(study: optuna.Study, cfg: Config, directory: Path) -> None:
    """The first worker records the study's config; later workers and restarts must match it."""
    mine = config_mod.resolve_paths(cfg)
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", mine.to_dict())
        return
    differences = {k: v for k, v in config_mod.diff(config_mod.from_dict(saved), mine).items()
                   if k not in RESUMABLE_CHANGES}
    if differences:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in differences.items())
        raise ConfigError(f"study {directory} was started with another config: {listed}; "
                          f"use the same config (these may change: {', '.join(RESUMABLE_CHANGES)}) or "
                          "another --name")


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Trials that use the budget: finished ones, claimed ones, and ones that failed with an error."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING) or (
        t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def _claim(study: optuna.Study, rdb, study_id: int, search: SearchConfig):
    """Under the study lock: retry dead trials, then start a trial if the budget allows (else None)."""
    _fail_dead_workers(study, rdb, study_id)
    with warnings.catch_warnings():  # heartbeats are experimental, and meant for study.optimize (we beat ourselves)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and sum(map(_counts, trials)) >= search.n_trials:
            return None, any(t.state == TrialState.RUNNING for t in trials)
        study.sampler = _sampler(search, search.seed + len(trials))  # draws depend on (seed, trial number)
        trial = study.ask()
    trial.set_user_attr("worker", _worker())
    return trial, True


def _worker() -> dict[str, Any]:
    """Who runs a trial: host name and network node (containers may share a host name), pid, start time."""
    return {"host": socket.gethostname(), "node": uuid.getnode(), "pid": os.getpid(),
            "started": _process_start(os.getpid())}


def _process_start(pid: int) -> float | None:
    """The process's creation time (psutil: Linux, macOS, Windows), None when no such process exists."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.NoSuchProcess:
        return None


def _is_dead(worker: dict[str, Any]) -> bool:
    """Whether a worker recorded on this machine is gone: its pid is free or now another process."""
    try:
        return _process_start(worker["pid"]) != worker.get("started")
    except psutil.Error:  # e.g. access denied: it exists, and we cannot tell more
        return False


def _fail_dead_workers(study: optuna.Study, rdb, study_id: int) -> None:
    """RUNNING trials of processes on this machine that no longer exist: fail them and queue their retry.
    Workers on other machines are left to the heartbeat."""
    me = _worker()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") != me["host"] or w.get("node", me["node"]) != me["node"] or w.get("pid") == me["pid"]:
            continue
        if not _is_dead(w):
            continue
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, t.number)
        _fail_for_retry(study, rdb, trial_id)


def _fail_for_retry(study: optuna.Study, rdb, trial_id: int) -> None:
    try:
        rdb.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    rdb.get_heartbeat_stale_trial_callback()(study, rdb.get_trial(trial_id))


def _run_trial(study, rdb, trial_id: int, trial: optuna.Trial, objective: Objective, search: SearchConfig,
               log: Callable[[str], None]) -> None:
    started = time.monotonic()
    with _Heartbeat(rdb, trial_id, search.heartbeat_seconds):
        try:
            value = objective(trial)
        except optuna.TrialPruned as e:
            _tell(study, trial, log, state=TrialState.PRUNED, seconds=time.monotonic() - started)
            log(f"trial {trial.number} pruned: {e}")
            return
        except KeyboardInterrupt:
            _fail_for_retry(study, rdb, trial_id)
            raise
        except Exception as e:
            reason = _reason(e)
            if not isinstance(e, DetectorError):
                log(traceback.format_exc())
            trial.set_user_attr("fail_reason", reason)
            _release_memory()
            _tell(study, trial, log, state=TrialState.FAIL, seconds=time.monotonic() - started)
            log(f"trial {trial.number} failed: {reason}")
            return
    _tell(study, trial, log, values=value, seconds=time.monotonic() - started)
    ens = trial.user_attrs.get("ensemble", {})
    log(f"trial {trial.number} finished: value {value:.4f} (held-out ensemble map_50 {ens.get('map_50', 0):.4f}, "
        f"f1 {ens.get('f1', 0):.4f})")


def _tell(study: optuna.Study, trial: optuna.Trial, log, seconds: float, **kwargs) -> None:
    trial.set_user_attr("seconds", round(seconds, 2))
    try:
        study.tell(trial, **kwargs)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as e:
        log(f"trial {trial.number}: its result could not be recorded ({e}); another worker failed it as stale")


def _reason(e: BaseException) -> str:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of GPU memory; lower train.batch_size or data.image_size, or drop them from the search space"
    return f"{type(e).__name__}: {e}"


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the trial runs."""

    def __init__(self, rdb, trial_id: int, interval: int):
        self.rdb, self.trial_id, self.interval = rdb, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a dropped connection must not kill the trial
                self.rdb.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class _StudyLock:
    """Serialises trial claims across workers: a PostgreSQL advisory lock, else a file lock in the folder.

    `with lock.held():` around each critical section.
    """

    def __init__(self, url: str, directory: Path, name: str):
        self.url = url
        self.file_lock = FileLock(str(directory / ".lock"))  # portable: fcntl on POSIX, msvcrt on Windows
        self.key = zlib.crc32(f"detector-study:{name}".encode())
        self.engine = None
        if url.startswith("postgresql"):
            import sqlalchemy

            with _storage_errors(url):
                self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.engine is None:
            with self.file_lock:
                yield
            return
        import sqlalchemy

        with _storage_errors(self.url):
            conn = self.engine.connect()
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


# ----------------------------------------------------------------------------------------------- best

def _best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def sync_best(study: optuna.Study, directory: Path, keep_models: str = "best") -> Path | None:
    """Make STUDY/best hold the best trial's models and ensemble settings; free other trials' models."""
    trials = study.get_trials(deepcopy=False)
    best = _best_trial(trials)
    if best is None:
        return None
    target = directory / "best"
    meta = target / "ensemble.json"
    current = read_json(meta).get("trial") if meta.exists() else None
    run = directory / best.user_attrs.get("run_dir", trial_folder(best.number))
    if current != best.number and (run / "top_models.json").exists():
        _write_best(best, run, target)
    if keep_models == "best":
        for t in trials:
            finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)  # failed with an error: no retry
            if finished and t.number != best.number and "run_dir" in t.user_attrs:
                if t.user_attrs["run_dir"] != best.user_attrs.get("run_dir"):
                    free_checkpoints(directory / t.user_attrs["run_dir"])
    return target


def _write_best(best: optuna.trial.FrozenTrial, run: Path, target: Path) -> None:
    top = read_json(run / "top_models.json")
    if not all((run / m["path"]).exists() for m in top):
        return
    cfg = config_mod.load(run / "config.yaml")
    tmp = target.with_name(".best.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    members = []
    heldout = {m["path"]: m for m in best.user_attrs.get("members", [])}
    for i, m in enumerate(top):
        name = f"model_{i}.pt"
        _link_or_copy(run / m["path"], tmp / name)
        members.append({"file": name, "source": f"{run.name}/{m['path']}", "fold": m["fold"], "epoch": m["epoch"],
                        "cv_score": m["score"], "heldout": heldout.get(m["path"], {}).get("metrics")})
    shutil.copy2(run / "config.yaml", tmp / "config.yaml")
    label_map = load_checkpoint(tmp / "model_0.pt")["label_map"]
    write_json(tmp / "ensemble.json", {
        "trial": best.number, "value": best.value, "params": best.params, "run": run.name,
        "metrics": best.user_attrs.get("ensemble"), "members": members, "ensemble": cfg.to_dict()["ensemble"],
        "score_threshold": cfg.eval.score_threshold, "iou_threshold": cfg.eval.iou_threshold,
        "label_map": label_map})
    old = target.with_name(".best.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -------------------------------------------------------------------------------------------- reading

def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, value, params, held-out ensemble and member metrics."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "ensemble": a.get("ensemble"), "members": [m["metrics"] for m in a.get("members", [])],
                     "cv_mean": a.get("cv_mean"), "seconds": a.get("seconds"), "run_dir": a.get("run_dir"),
                     "fail_reason": a.get("fail_reason"),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "last_step": max(t.intermediate_values) if t.intermediate_values else None})
    return rows


def plot_study(study: optuna.Study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optimisation history, intermediate values, parameter importances and parallel coordinates as PNG.

    Returns the files written and, for each plot that could not be drawn yet, why.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {"history": vis.plot_optimization_history, "intermediate_values": vis.plot_intermediate_values,
             "param_importances": vis.plot_param_importances, "parallel_coordinate": vis.plot_parallel_coordinate}
    written, skipped = [], []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = draw(study)
            except Exception as e:  # e.g. importances need two finished trials with different parameters
                skipped.append(f"{name}: {e}")
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, skipped


def report_study(study_dir: str | Path, fmt: str = "table", storage: str | None = None) -> tuple[str, list[Path]]:
    """Trials table, best trial and plots (written to STUDY/plots/) of a study, finished or not."""
    from .report import format_trials

    directory = Path(study_dir)
    study = load_study(directory, storage)
    rows = trial_rows(study)
    plots, skipped = plot_study(study, directory / "plots") if rows else ([], [])
    if fmt in ("json", "csv"):
        return format_trials(rows, fmt), plots
    result = summarize(study, directory)
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items()) or "no trials yet"
    parts = [f"study {result.name} ({directory}): {states}", format_trials(rows, fmt)]
    best = next((r for r in rows if r["number"] == result.best_trial), None)
    if best is not None:
        e = best["ensemble"] or {}
        parts.append(f"\nbest trial {best['number']}: value {best['value']:.4f}; held-out ensemble map_50 "
                     f"{e.get('map_50', float('nan')):.4f}, f1 {e.get('f1', float('nan')):.4f}, map "
                     f"{e.get('map', float('nan')):.4f}")
        parts.append("  params: " + _format_params(best["params"]))
        parts += [f"  member {i}: score {m.get('score', float('nan')):.4f}  map_50 {m.get('map_50', float('nan')):.4f}"
                  f"  f1 {m.get('f1', float('nan')):.4f}" for i, m in enumerate(best["members"])]
        if (directory / "best" / "ensemble.json").exists():
            parts.append(f"  models: {directory / 'best'} (detector predict {directory / 'best'} IMAGES --out DIR)")
    if plots:
        parts.append("plots: " + ", ".join(str(p) for p in plots))
    parts += [f"not plotted yet: {s}" for s in skipped]
    return "\n".join(parts), plots
