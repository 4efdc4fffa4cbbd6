"""Publishing STUDY/best once the trials are done: the trials are ranked by their fold-mean score (the same
folds for every trial), the members are refit on all of data.train (refit.strategy: the best config with
several seeds, or the best trials' configs; `folds` keeps the best trial's fold models instead), they
predict data.val once, the ensemble's operating point is tuned there, and best/ is replaced atomically.
Other finished trials' models are freed as the study goes (search.keep_models: best)."""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from .. import config as config_mod
from ..checkpoint import load_checkpoint
from ..top_models import TopEntry, read_index
from ..config import Config
from ..training.cv import read_summary
from ..training.summary import FoldSummary
from ..data.coco import CocoIndex
from ..analysis.evaluate import HeldOutResult, TestScore, evaluate_held_out, evaluate_on_test, write_held_out
from ..files import atomic_folder, read_json, write_json
from ..intervals import format_interval
from ..inference.manifest import Manifest, PublishedMember, read_manifest, write_manifest
from ..layout import CONFIG, RunPaths, StudyPaths, member_file
from ..metrics import Metrics
from ..training.refit import Member, member, refit_epochs, seed_members
from .trial_record import FOLD_EPOCHS, TrialRecord, latency_of
from .objective import free_checkpoints


def ranked_trials(trials: list[optuna.trial.FrozenTrial], max_latency_ms: float = 0.0,
                  ) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, best first (the earlier trial first among equals). One objective: by fold-mean
    score. Score and latency: by score among the trials within `max_latency_ms` (the others are left out),
    or with no budget (0) nearest the ideal point first (see knee_order)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not complete or len(complete[0].values) == 1:
        return sorted(complete, key=lambda t: (-t.values[0], t.number))
    if max_latency_ms > 0:
        within = [t for t in complete if t.values[1] <= max_latency_ms]
        return sorted(within, key=lambda t: (-t.values[0], t.number))
    return knee_order(complete)


def knee_order(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials of a score-latency study by their distance to the ideal point (the best score at the lowest
    latency), each objective scaled to the trials' range: the first is the knee of the Pareto front (the
    nearest point is never dominated), where a little more latency stops buying much score."""
    scores, latencies = [t.values[0] for t in trials], [t.values[1] for t in trials]
    top, span = max(scores), (max(scores) - min(scores)) or 1.0
    low, width = min(latencies), (max(latencies) - min(latencies)) or 1.0
    return sorted(trials, key=lambda t: (math.hypot((top - t.values[0]) / span, (t.values[1] - low) / width),
                                         -t.values[0], t.number))


def best_trial(trials: list[optuna.trial.FrozenTrial], max_latency_ms: float = 0.0,
               ) -> optuna.trial.FrozenTrial | None:
    ranked = ranked_trials(trials, max_latency_ms)
    return ranked[0] if ranked else None


def free_other_trials(study: optuna.Study, directory: Path, keep_models: str = "best",
                      max_latency_ms: float = 0.0) -> None:
    """With keep_models best, finished trials other than the best one lose their model files."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials, max_latency_ms)
    if keep_models != "best" or best is None:
        return
    kept = TrialRecord.of(best).run_dir
    for record in map(TrialRecord.of, trials):
        if record.finished and record.run_dir != kept:
            free_checkpoints(StudyPaths(directory).trial(record.run_dir).root)


@dataclass(frozen=True)
class Plan:
    """What best/ will hold: members to refit below `root` (or, for refit.strategy folds, the best trial's
    fold models, `entries` relative to root), planned from the ranked trials; `run` is the best trial's folder
    and `config` its config (the study's with the trial's parameters)."""

    best: optuna.trial.FrozenTrial
    run: RunPaths
    root: Path
    members: list[Member]
    entries: list[TopEntry]
    config: Config
    why: str = ""  # how the members' epochs were chosen

    @property
    def key(self) -> dict[str, Any]:
        """What identifies the plan on any machine: its best trial and its members' names (or fold models)."""
        return {"trial": self.best.number, "members": [m.name for m in self.members] or [e.path for e in self.entries]}


def plan(study: optuna.Study, directory: Path, cfg: Config,
         fetch: Callable[[optuna.trial.FrozenTrial, RunPaths], None] | None = None) -> Plan | None:
    """The publish plan, from the storage alone (the trials' parameters and fold epochs), so any worker can
    make it; refit.strategy folds reads the best trial's folder, which `fetch` brings here first."""
    ranked = ranked_trials(study.get_trials(deepcopy=False), cfg.search.max_latency_ms)
    if not ranked:
        return None
    paths = StudyPaths(directory)
    runs = [paths.trial(TrialRecord.of(t).run_dir) for t in ranked]
    best_cfg = trial_config(cfg, ranked[0])
    if cfg.refit.strategy == "folds":
        if fetch is not None:
            fetch(ranked[0], runs[0])
        return Plan(ranked[0], runs[0], runs[0].root, [], read_index(runs[0])[0], best_cfg)
    if cfg.refit.strategy == "seeds":
        epochs, why = _trial_epochs(ranked[0], runs[0], cfg)
        members = seed_members(best_cfg, epochs, cfg.refit.members, prefix=f"{runs[0].root.name}_")
    else:
        members = []
        for t, run in list(zip(ranked, runs))[: cfg.refit.members]:
            trial_cfg = trial_config(cfg, t)
            epochs, why = _trial_epochs(t, run, cfg)
            members.append(member(trial_cfg, epochs, trial_cfg.train.seed, run.root.name, f"trial {t.number}"))
    return Plan(ranked[0], runs[0], paths.refit, members, [], best_cfg, why)


def trial_config(cfg: Config, t: optuna.trial.FrozenTrial) -> Config:
    """The config a trial trained: the study's with the trial's parameters (what Objective built)."""
    return config_mod.with_values(cfg, t.params, source=f"trial {t.number} parameters")


def _trial_epochs(t: optuna.trial.FrozenTrial, run: RunPaths, cfg: Config) -> tuple[int, str]:
    """The epochs its folds chose and why: from the storage (FOLD_EPOCHS); for trials recorded before it
    was, from its folder's summary."""
    recorded = t.user_attrs.get(FOLD_EPOCHS)
    folds = ([FoldSummary(k, int(f["best_epoch"]), int(f["epochs_run"]), bool(f["stopped_early"]), Metrics.from_dict({}))
              for k, f in enumerate(recorded)] if recorded is not None else read_summary(run.root).folds)
    return refit_epochs(folds, cfg.refit.epochs, cfg.refit.capped_factor)


def publish(plan_: Plan, entries: list[TopEntry], directory: Path, cfg: Config, held_out: CocoIndex,
            log: Callable[[str], None]) -> Path:
    """Tune the members' ensemble on data.val and make STUDY/best hold it (unchanged if it already does)."""
    paths = StudyPaths(directory)
    sources = [str(plan_.root / e.path) for e in entries]
    if paths.ensemble.exists() and _candidates(read_manifest(paths.best)) == sources:
        return paths.best
    result = evaluate_held_out(plan_.config, plan_.root, entries, held_out)
    point = result.operating_point
    log("members alone on data.val (mAP, score): "
        + ", ".join(f"{m.metrics.map:.4f} {m.metrics.score:.4f}" for m in result.members))
    log(f"published {len(result.published)} of {len(entries)}: {result.selection.reason}")
    log(f"operating point from {point.evaluations} settings in {point.seconds:.1f}s: threshold "
        f"{point.thresholds.default:.3f}, mAP {point.metrics.map:.4f}, score {point.score:.4f} (configured "
        f"{point.configured_score:.4f})")
    _write_best(plan_, entries, result, cfg, paths)
    return paths.best


def _candidates(manifest: Manifest) -> list[str]:
    """The refit members best/ was chosen from (older best/ folders published them all)."""
    return manifest.candidates or [m.path for m in manifest.members]


def _write_best(plan_: Plan, entries: list[TopEntry], result: HeldOutResult, cfg: Config,
                paths: StudyPaths) -> None:
    with atomic_folder(paths.best) as tmp:
        _fill_best(tmp, plan_, entries, result, cfg)


def _fill_best(tmp: Path, plan_: Plan, entries: list[TopEntry], result: HeldOutResult, cfg: Config) -> None:
    """best/'s files, written into the staging folder `tmp`: the published members, config.yaml,
    ensemble.json and the held-out report."""
    members = []
    for i, k in enumerate(result.published):
        e, alone = entries[k], result.members[k]
        name = member_file(i)
        _link_or_copy(plan_.root / e.path, tmp / name)
        members.append(PublishedMember(name, str(plan_.root / e.path), e.source or f"{plan_.root.name}/{e.path}",
                                       e.fold, e.epoch, alone.metrics, alone.score_threshold))
    best, run = plan_.best, plan_.run
    config_mod.save(plan_.config, tmp / CONFIG)
    cv_mean = TrialRecord.of(best).cv_mean
    write_manifest(tmp, Manifest(
        members, result.operating_point, load_checkpoint(tmp / member_file(0)).label_map, trial=best.number,
        value=best.values[0], latency_ms=latency_of(best), params=best.params, run=run.root.name,
        fold_estimate=Metrics.from_dict(cv_mean) if cv_mean else None,
        refit={**cfg.to_dict()["refit"], "epochs_trained": [entries[k].epoch + 1 for k in result.published]},
        metrics=result.ensemble.metrics, candidates=[str(plan_.root / e.path) for e in entries],
        selection=result.selection.to_dict(), iou_threshold=cfg.eval.iou_threshold))
    write_held_out(RunPaths(tmp), result)


def score_best_on_test(directory: Path, test: CocoIndex, cfg: Config, log: Callable[[str], None]) -> TestScore | None:
    """Score STUDY/best once on the test split (again only when best/ holds other models): best/test.json.
    The study never selects or tunes on it."""
    paths = StudyPaths(directory)
    if not paths.ensemble.exists():
        return None
    manifest = read_manifest(paths.best)
    published = [m.path for m in manifest.members]
    if paths.test.exists():
        stored = read_json(paths.test)
        if stored.get("members") == published:
            return TestScore.from_dict(stored)
    result = evaluate_on_test(paths.best, test, cfg)
    write_json(paths.test, {"trial": manifest.trial, "members": published, **result.to_dict()})
    m = result.ensemble.metrics
    iv = lambda k: format_interval(m.value(k), m.interval(k))
    log(f"test split ({result.images} images, {result.boxes} boxes), published models: map {iv('map')}, "
        f"map_50 {iv('map_50')}, map_75 {iv('map_75')}, f1 {iv('f1')}, score {m.score:.4f}"
        + (f" ({m.bootstrap})" if m.bootstrap else ""))
    for i, diffs in enumerate(result.ensemble.versus_members):
        log(f"  minus member {i} alone: " + ", ".join(f"{k} {d.value:+.4f} [{d.interval.low:+.4f}, "
                                                        f"{d.interval.high:+.4f}] {d.verdict}"
                                                        for k, d in diffs.items() if k in ("map", "map_50")))
    return result


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
