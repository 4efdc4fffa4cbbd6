"""Publishing STUDY/best: the best trial's models, config and ensemble settings, replaced atomically; other
finished trials' models are freed (search.keep_models: best)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from .. import config as config_mod
from ..checkpoint import load_checkpoint
from ..config import Config
from ..data.coco import CocoIndex
from ..evaluate import evaluate_on_test
from ..files import read_json, write_json
from ..layout import CONFIG, ENSEMBLE, RunPaths, StudyPaths, member_file, trial_folder
from .objective import free_checkpoints


def best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def sync_best(study: optuna.Study, directory: Path, keep_models: str = "best") -> Path | None:
    """Make STUDY/best hold the best trial's models and ensemble settings; free other trials' models."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials)
    if best is None:
        return None
    study_paths = StudyPaths(directory)
    meta = study_paths.ensemble
    current = read_json(meta).get("trial") if meta.exists() else None
    run = study_paths.trial(best.user_attrs.get("run_dir", trial_folder(best.number)))
    if current != best.number and run.top_models.exists():
        _write_best(best, run, study_paths.best)
    if keep_models == "best":
        for t in trials:
            finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)  # failed with an error: no retry
            if finished and t.number != best.number and "run_dir" in t.user_attrs:
                if t.user_attrs["run_dir"] != best.user_attrs.get("run_dir"):
                    free_checkpoints(study_paths.trial(t.user_attrs["run_dir"]).root)
    return study_paths.best


def _write_best(best: optuna.trial.FrozenTrial, paths: RunPaths, target: Path) -> None:
    run = paths.root
    top = read_json(paths.top_models)
    if not all((run / m["path"]).exists() for m in top):
        return
    cfg = config_mod.load(paths.config)
    tmp = target.with_name(".best.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    members = []
    heldout = {m["path"]: m for m in best.user_attrs.get("members", [])}
    for i, m in enumerate(top):
        name = member_file(i)
        _link_or_copy(run / m["path"], tmp / name)
        members.append({"file": name, "source": f"{run.name}/{m['path']}", "fold": m["fold"], "epoch": m["epoch"],
                        "cv_score": m["score"], "heldout": heldout.get(m["path"], {}).get("metrics")})
    shutil.copy2(paths.config, tmp / CONFIG)
    label_map = load_checkpoint(tmp / member_file(0))["label_map"]
    point = best.user_attrs.get("operating_point") or {
        "ensemble": cfg.to_dict()["ensemble"], "score_threshold": cfg.eval.score_threshold, "class_thresholds": {}}
    write_json(tmp / ENSEMBLE, {
        "trial": best.number, "value": best.value, "params": best.params, "run": run.name,
        "metrics": best.user_attrs.get("ensemble"), "members": members, "ensemble": point["ensemble"],
        "score_threshold": point["score_threshold"], "class_thresholds": point["class_thresholds"],
        "iou_threshold": cfg.eval.iou_threshold, "operating_point": point, "label_map": label_map})
    old = target.with_name(".best.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def score_best_on_test(directory: Path, test: CocoIndex, cfg: Config, log: Callable[[str], None]) -> dict | None:
    """Score STUDY/best once on the test split (again only when best/ holds another trial): best/test.json.
    The study never selects or tunes on it."""
    paths = StudyPaths(directory)
    if not paths.ensemble.exists():
        return None
    trial = read_json(paths.ensemble)["trial"]
    if paths.test.exists() and read_json(paths.test).get("trial") == trial:
        return read_json(paths.test)
    result = {"trial": trial, **evaluate_on_test(paths.best, test, cfg)}
    write_json(paths.test, result)
    m = result["metrics"]
    log(f"test split ({result['images']} images, {result['boxes']} boxes), best trial {trial}: score "
        f"{m['score']:.4f}, map_50 {m['map_50']:.4f}, recall {m['recall']:.4f}, precision {m['precision']:.4f}")
    return result


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
