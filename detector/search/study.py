"""run_study: run, resume or join the study in a folder until it has search.n_trials trials."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from .. import config as config_mod
from .. import distributed
from ..config import Config
from ..engine import resolve_device
from ..errors import ConfigError
from ..layout import StudyPaths
from ..runs import RESUMABLE_CHANGES
from ..evaluate import check_held_out
from ..train import load_test
from .best import best_trial, score_best_on_test, sync_best
from . import ranks
from .objective import Objective
from .space import check_space
from .storage import open_study, record_storage, storage_url
from .workers import StudyLock, claim, run_trial


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
    w = distributed.start(resolve_device(cfg.train.device))
    check_space(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log lines say what optuna's INFO lines would
    log = distributed.main_only(w, log)
    objective = Objective(cfg, directory, progress=progress and w.main, log=log)  # validates the data first
    test = load_test(cfg, objective.train_index.label_map)
    check_held_out(objective.train_index, objective.held_out, test)  # read only here, and at the end
    if not w.main:  # under torchrun: the trials rank 0 runs, run together
        ranks.follow(objective, w)
        return StudyResult(directory, directory.name, {}, None, None)
    try:
        result = _lead(cfg, directory, storage, ranks.shared(objective, w), test, log)
    except BaseException as e:
        ranks.stop(w, f"{type(e).__name__}: {e}")
        raise
    ranks.stop(w)
    return result


def _lead(cfg: Config, directory: Path, storage: str | None, objective: Callable, test, log) -> StudyResult:
    directory.mkdir(parents=True, exist_ok=True)
    url = storage_url(directory, storage)
    lock = StudyLock(url, directory, directory.name)
    with lock.held():  # workers starting together would race to create the storage's tables
        study, rdb = open_study(directory, url, cfg.search)
        _check_config(study, cfg, directory)
        record_storage(directory, url)
        sync_best(study, directory, cfg.search.keep_models)  # in case a worker died while updating best/
    config_mod.save(config_mod.resolve_paths(cfg), StudyPaths(directory).config)
    study_id = rdb.get_study_id_from_name(study.study_name)
    started = time.monotonic()
    while True:
        if cfg.search.timeout and time.monotonic() - started > cfg.search.timeout:
            log(f"timeout of {cfg.search.timeout:g} s reached; no new trial started")
            break
        with lock.held():
            trial, others_running = claim(study, rdb, study_id, cfg.search)
        if trial is None and not others_running:
            break
        if trial is None:  # the budget is claimed; wait in case a running trial dies and must be retried
            time.sleep(min(2, cfg.search.heartbeat_seconds))
            continue
        run_trial(study, rdb, rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number), trial,
                  objective, cfg.search, log)
        with lock.held():
            sync_best(study, directory, cfg.search.keep_models)
    if test is not None:
        with lock.held():
            score_best_on_test(directory, test, cfg, log)
    return summarize(study, directory)


def summarize(study: optuna.Study, directory: Path) -> StudyResult:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    best = best_trial(trials)
    return StudyResult(directory, study.study_name, states, best.number if best else None,
                       best.value if best else None)


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
