"""run_study: run, resume or join the study in a folder until it has search.n_trials trials."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from .. import config as config_mod
from .. import distributed, preflight
from ..config import Config
from ..errors import ConfigError
from ..layout import RunPaths, StudyPaths
from ..runs import data_fingerprint, describe_differences, resume_differences
from ..data.splits import load_test
from ..training.refit import Member, refit
from .artifacts import Artifacts, open_artifacts
from .best import Plan, best_trial, free_other_trials, plan, publish, score_best_on_test
from .mirror import index_from, restore
from .publishing import PUBLISHER, check_artifacts, published_elsewhere, record_published, who
from . import ranks
from .objective import Objective
from .space import check_space, starting_params
from .storage import open_study, record_storage, storage_url
from .trial_record import START, UPLOADED, latency_of
from .workers import StudyLock, claim, run_trial, this_worker
from ..tracking import StudyTracking, Tracker
from ..analysis.evaluate import HeldOutResult, TestScore
from ..files import read_json


@dataclass
class StudyResult:
    directory: Path
    name: str
    states: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_latency_ms: float | None = None
    published_by: str | None = None  # the worker that published best/, when it was another one (see fetch)


def run_study(cfg: Config, study_dir: str | Path, *, storage: str | None = None, progress: bool = False,
              log: Callable[[str], None] = print, mlflow: str | None = None,
              artifacts: str | None = None) -> StudyResult:
    """Run (or resume, or join) the study in `study_dir` until it has cfg.search.n_trials trials.

    Trials that end with an error count (recorded as failed with their reason); trials whose worker died
    are retried. `storage` is an Optuna RDB URL; default: SQLite in the study folder. `mlflow`: a tracking
    URI to log the study to as an MLflow experiment of its name (tracking.py), reached before any trial runs.
    `artifacts`: s3://BUCKET/PREFIX or a folder (artifacts.py), checked before any trial runs: each trial's
    folder is kept there as it trains (a retry on any machine continues from it) and best/ is uploaded, for
    `detector fetch`.
    """
    directory = Path(study_dir)
    cfg = config_mod.resolve_paths(cfg)  # once, here: paths absolute, the pipeline file read
    w = distributed.setup(cfg.train.device, cfg.train.amp, log).world
    preflight.check(cfg)
    check_space(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log lines say what optuna's INFO lines would
    log = distributed.main_only(w, log)
    if not cfg.search.space and cfg.search.n_trials > 1:
        log(f"warning: search.space is empty, so all {cfg.search.n_trials} trials train the same config; give "
            "search.space keys to search, or run detector cv once")
    store = open_artifacts(artifacts) if artifacts and w.main else None
    tracking = StudyTracking(Tracker.connect(mlflow, directory.name, log), directory) if mlflow and w.main else None
    objective = Objective(cfg, directory, progress=progress and w.main, log=log,
                          tracking=tracking, artifacts=store)  # validates the data first
    test = load_test(cfg, objective.train_index, objective.held_out, log)  # read only here, and at the end

    def refit_members(members: list[Member], root: Path) -> list[dict]:
        return refit(members, objective.train_index, objective.held_out, root, progress=progress and w.main, log=log,
                     callbacks=tracking.refit_callbacks() if tracking else ())

    if not w.main:  # under torchrun: the trials and refits rank 0 runs, run together
        ranks.follow(objective, w, refit_members)
        return StudyResult(directory, directory.name, {}, None, None)
    try:
        publisher = Publisher(directory, cfg, objective.held_out, test, store, w, refit_members, log)
        result = _lead(cfg, directory, storage, ranks.shared(objective, w), log, publish_best=publisher,
                       artifacts=store)
        if tracking is not None:
            track_published(tracking, directory)
    except BaseException as e:
        ranks.stop(w, f"{type(e).__name__}: {e}")
        raise
    ranks.stop(w)
    return result


def _lead(cfg: Config, directory: Path, storage: str | None, objective: Callable, log,
          publish_best: Callable[[optuna.Study, StudyLock], str | None],
          artifacts: Artifacts | None = None) -> StudyResult:
    directory.mkdir(parents=True, exist_ok=True)
    url = storage_url(directory, storage)
    lock = StudyLock(url, directory, directory.name)
    with lock.held():  # workers starting together would race to create the storage's tables
        study, rdb = open_study(directory, url, cfg.search)
        _check_config(study, cfg, directory)
        check_artifacts(study, artifacts)
        record_storage(directory, url)
        if not study.get_trials(deepcopy=False):  # trial 0: the config's own values, beside what the search finds
            study.enqueue_trial(starting_params(cfg), user_attrs={START: True})
    config_mod.save(cfg, StudyPaths(directory).config)
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
            free_other_trials(study, directory, cfg.search.keep_models, cfg.search.max_latency_ms)
    return replace(summarize(study, directory), published_by=publish_best(study, lock))


@dataclass
class Publisher:
    """Refits and publishes best/ (search/best.py), scores it on the test split and records it in the study
    (publishing.py): one worker at a time across machines; the others say who publishes and stop."""

    directory: Path
    cfg: Config
    held_out: Any
    test: Any
    artifacts: Artifacts | None
    world: distributed.World
    refit_members: Callable[[list[Member], Path], list[dict]]
    log: Callable[[str], None]

    def __call__(self, study: optuna.Study, lock: StudyLock) -> str | None:
        """None when this folder's best/ holds the plan; else the worker that published it."""
        with lock.publishing() as mine:
            if not mine:
                publisher = who(study.user_attrs.get(PUBLISHER))
                self.log(f"{publisher} is publishing best/; this one stops here")
                return publisher
            me = this_worker()
            study.set_user_attr(PUBLISHER, me)
            planned = plan(study, self.directory, self.cfg, fetch=self._fetch if self.artifacts else None)
            if planned is None:
                self.log(_nothing_published(study, self.cfg))
                return None
            elsewhere = published_elsewhere(study, self.directory, planned.key)
            if elsewhere is not None:
                self.log(f"best/ (trial {planned.best.number}) was published by {who(elsewhere.get('by'))}; "
                         + (f"`detector fetch {self.directory.name} --storage URL --out DIR` brings it here"
                            if elsewhere.get("files") else f"it is in {elsewhere.get('folder')} there"))
                return who(elsewhere.get("by"))
            self._publish(planned)
            record_published(study, self.directory, planned.key, me, self.artifacts)
            return None

    def _publish(self, planned: Plan) -> None:
        entries = planned.entries
        if planned.members:
            self.log(f"refit: {len(planned.members)} member(s) on all of data.train, "
                     f"{planned.members[0].config.train.epochs} epochs ({planned.why})")
            ranks.announce_refit(self.world, planned.members, planned.root)
            entries = self.refit_members(planned.members, planned.root)
        publish(planned, entries, self.directory, self.cfg, self.held_out, self.log)
        if self.test is not None:
            score_best_on_test(self.directory, self.test, self.cfg, self.log)

    def _fetch(self, t: optuna.trial.FrozenTrial, run: RunPaths) -> None:
        """refit.strategy folds publishes the best trial's fold models: bring its folder here first."""
        restore(self.artifacts, run.root, index_from(t.user_attrs.get(UPLOADED)))


def _nothing_published(study: optuna.Study, cfg: Config) -> str:
    latencies = [latency_of(t) for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if latencies and cfg.search.max_latency_ms:
        return (f"no trial is within search.max_latency_ms {cfg.search.max_latency_ms:g} (the fastest took "
                f"{min(latencies):.1f} ms per image), so nothing is published; raise it, or search smaller models "
                "(data.image_size, model.backbone, model.fpn_channels)")
    return "no trial completed, so nothing is published"


def summarize(study: optuna.Study, directory: Path) -> StudyResult:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    best = best_trial(trials, study_search(study).max_latency_ms)
    return StudyResult(directory, study.study_name, states, best.number if best else None,
                       best.values[0] if best else None, latency_of(best) if best else None)


def study_search(study: optuna.Study) -> config_mod.SearchConfig:
    """The search section of the config the study was started with (as recorded in the study)."""
    saved = study.user_attrs.get("config")
    return config_mod.from_dict(saved).search if saved else config_mod.SearchConfig()


def _check_config(study: optuna.Study, cfg: Config, directory: Path) -> None:
    """The first worker records the study's config (resolved by run_study); later workers and restarts must
    match it."""
    saved = study.user_attrs.get("config")
    data, recorded = data_fingerprint(cfg, ("train", "val", "test")), study.user_attrs.get("data", {})
    changed = [k for k, v in data.items() if k in recorded and recorded[k] != v]
    if changed:
        raise ConfigError(f"study {directory}: the {' and '.join(f'data.{k}' for k in changed)} annotations changed "
                          "since the study started (same path, other content); its trials would not compare: use "
                          "another --name")
    study.set_user_attr("data", {**recorded, **data})
    if saved is None:
        study.set_user_attr("config", cfg.to_dict())
        return
    differences = resume_differences(config_mod.from_dict(saved), cfg)
    if differences:
        raise ConfigError(f"study {directory} was started with another config: {describe_differences(differences)}; "
                          "use the same config or another --name")


def track_published(tracking: StudyTracking, directory: Path) -> None:
    """The published ensemble's held-out and test scores (best/heldout.json, best/test.json) on the study's
    MLflow run `published`, with ensemble.json; nothing when nothing was published."""
    paths = StudyPaths(directory)
    if not paths.ensemble.exists():
        return
    heldout = HeldOutResult.from_dict(read_json(paths.heldout)).ensemble.metrics.summary()
    test = TestScore.from_dict(read_json(paths.test)).ensemble.metrics.summary() if paths.test.exists() else {}
    tracking.published(heldout, test, [paths.ensemble, paths.heldout, *([paths.test] if paths.test.exists() else [])])
