"""Several workers on one study: claiming trials under a lock so that together they run exactly
search.n_trials, heartbeats, and retrying the trials of workers that died (heartbeat gone, or on this
machine their process gone: psutil pid + start time, so it works on Linux, macOS and Windows)."""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
import traceback
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import psutil
from filelock import FileLock, Timeout
from optuna.trial import TrialState

from ..config import SearchConfig
from ..errors import DetectorError
from ..layout import StudyPaths
from .objective import Objective
from .storage import make_sampler, storage_errors
from .trial_record import CV_MEAN, FAIL_REASON, SECONDS, WORKER, TrialRecord


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Trials that use the budget: finished ones, claimed ones, and ones that failed with an error."""
    return t.state in (TrialState.RUNNING, TrialState.WAITING) or TrialRecord.of(t).finished


def claim(study: optuna.Study, rdb, study_id: int, search: SearchConfig):
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
        study.sampler = make_sampler(search, search.seed + len(trials))  # draws depend on (seed, trial number)
        trial = study.ask()
    trial.set_user_attr(WORKER, this_worker())
    return trial, True


def this_worker() -> dict[str, Any]:
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
    me = this_worker()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = TrialRecord.of(t).worker
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


def run_trial(study, rdb, trial_id: int, trial: optuna.Trial, objective: Objective, search: SearchConfig,
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
            trial.set_user_attr(FAIL_REASON, reason)
            _release_memory()
            _tell(study, trial, log, state=TrialState.FAIL, seconds=time.monotonic() - started)
            log(f"trial {trial.number} failed: {reason}")
            return
    _tell(study, trial, log, values=value, seconds=time.monotonic() - started)
    cv = trial.user_attrs.get(CV_MEAN, {})
    score, *latency = value if isinstance(value, tuple) else (value,)
    log(f"trial {trial.number} finished: fold-mean score {score:.4f} (map_50 {cv.get('map_50', 0):.4f}, "
        f"f1 {cv.get('f1', 0):.4f} at its best threshold)" + (f", {latency[0]:.1f} ms per image" if latency else ""))


def _tell(study: optuna.Study, trial: optuna.Trial, log, seconds: float, **kwargs) -> None:
    trial.set_user_attr(SECONDS, round(seconds, 2))
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


class StudyLock:
    """Serialises trial claims across workers: a PostgreSQL advisory lock, else a file lock in the folder.

    `with lock.held():` around each critical section.
    """

    def __init__(self, url: str, directory: Path, name: str):
        self.url = url
        self.file_lock = FileLock(str(StudyPaths(directory).lock))  # portable: fcntl on POSIX, msvcrt on Windows
        self.publish_lock = FileLock(str(StudyPaths(directory).publish_lock), timeout=0)
        self.key = zlib.crc32(f"detector-study:{name}".encode())
        self.publish_key = zlib.crc32(f"detector-publish:{name}".encode())
        self.engine = None
        if url.startswith("postgresql"):
            import sqlalchemy

            with storage_errors(url):
                self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.engine is None:
            with self.file_lock:
                yield
            return
        import sqlalchemy

        with storage_errors(self.url):
            conn = self.engine.connect()
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})

    @contextlib.contextmanager
    def publishing(self) -> Iterator[bool]:
        """Whether this worker may publish: True for the first to ask, for as long as the block runs; False
        while another holds it. With PostgreSQL it holds across machines, and a killed holder's claim ends
        with its connection; otherwise it is a file lock in the study folder (one machine)."""
        if self.engine is None:
            try:
                self.publish_lock.acquire()
            except Timeout:
                yield False
                return
            try:
                yield True
            finally:
                self.publish_lock.release()
            return
        import sqlalchemy

        with storage_errors(self.url):
            conn = self.engine.connect()
        with conn:
            mine = bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                     {"k": self.publish_key}).scalar())
            try:
                yield mine
            finally:
                if mine:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.publish_key})
