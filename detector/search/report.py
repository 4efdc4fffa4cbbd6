"""Reading a study: one row per trial, and the text report with its best trial and plots."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna

from ..inference.manifest import read_manifest
from ..layout import StudyPaths
from ..plots import pareto_figure, save_figures, study_figures
from ..files import read_json
from ..analysis.evaluate import TestScore
from ..metrics import Metrics
from ..report import (format_differences, format_intervals, format_per_class, format_published, format_trials,
                      read_heldout, worst_line)
from .objective import _format_params
from .storage import load_study
from .trial_record import TrialRecord
from .study import study_search, summarize


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, value (its fold-mean score), params, fold means and stds, the
    folds' best epochs."""
    return [{**TrialRecord.of(t).to_dict(), "intermediate": dict(t.intermediate_values),
             "last_step": max(t.intermediate_values) if t.intermediate_values else None}
            for t in study.get_trials(deepcopy=False)]


def plot_study(study: optuna.Study, rows: list[dict[str, Any]], out_dir: Path) -> tuple[list[Path], list[str]]:
    """The study's plots as PNG in out_dir; returns the files written and, for each plot not drawn yet, why."""
    importances, skipped = None, []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as e:  # e.g. fewer than two finished trials, or one value everywhere
        skipped.append(f"param_importances: {e}")
    figures = study_figures(rows, importances)
    if "parallel_coordinate" not in figures:
        skipped.append("parallel_coordinate: no finished trial with searched parameters yet")
    return save_figures(figures, out_dir), skipped


def _published(paths: StudyPaths, best: dict[str, Any]) -> list[str]:
    """best/: how its members were made, their and the ensemble's scores on data.val beside the fold estimate,
    the operating point, and the test score on data.test."""
    manifest = read_manifest(paths.best)
    lines = [f"  models: {paths.best} (detector predict {paths.best} IMAGES --out DIR); refit.strategy "
             f"{manifest.refit.get('strategy', '?')}: " + "; ".join(m.source for m in manifest.members)]
    if paths.heldout.exists():
        cv_mean = best.get("cv_mean")
        lines.append(format_published(read_heldout(paths.heldout), Metrics.from_dict(cv_mean) if cv_mean else None))
        lines.append(worst_line(paths.heldout, paths.heldout_predictions, paths.plots))
    point = manifest.operating_point
    if point.images:
        e, per_class = point.ensemble, point.thresholds.to_dict()["class_thresholds"]
        lines.append(f"operating point (chosen on data.val from stored predictions): threshold "
                     f"{point.thresholds.default:.3f}" + (f", per class {per_class}" if per_class else "") +
                     f"; WBF {e.conf_type}, iou_thr {e.iou_thr}, skip_box_thr {e.skip_box_thr}, weights "
                     f"{e.weights or 'equal'}; score {point.score:.4f} vs {point.configured_score:.4f} "
                     "with the configured settings (optimistic: chosen on these images)")
    val = manifest.metrics or Metrics.from_dict({})
    if val.per_class:
        lines.append(format_per_class(val))
    if paths.test.exists():
        test = TestScore.from_dict(read_json(paths.test))
        m = test.ensemble.metrics
        lines.append(f"test score on data.test ({test.annotations}, {test.images} images, {test.boxes} "
                     f"boxes; never used to select or tune): {m.score:.4f}  map_50 {m.map_50:.4f}  map {m.map:.4f}")
        if m.intervals:
            alone = [(f"member {i} alone", x.metrics) for i, x in enumerate(test.members)]
            lines.append(format_intervals([("published", m), *alone]))
        for i, diffs in enumerate(test.ensemble.versus_members):
            lines.append(f"published minus member {i} alone on data.test:\n" + format_differences(diffs))
        lines.append(format_per_class(m))
    else:
        lines.append("no data.test: the scores above are the only ones; set data.test to an untouched split for "
                     "an unbiased one")
    return lines


def _front_numbers(study: optuna.Study) -> set[int]:
    """The Pareto-optimal trials (Optuna's best_trials: no other trial is at least as good on both
    objectives and better on one)."""
    return {t.number for t in study.best_trials} if study.get_trials(deepcopy=False) else set()


def _front(study: optuna.Study, rows: list[dict[str, Any]], chosen: int | None, paths: StudyPaths) -> list[str]:
    """The Pareto front as a table, fastest first, and which of its trials best/ holds and why."""
    front = _front_numbers(study)
    on = sorted((r for r in rows if r["number"] in front), key=lambda r: r["latency_ms"])
    budget = study_search(study).max_latency_ms
    rule = (f"the best score within search.max_latency_ms {budget:g}" if budget
            else "the knee: nearest the ideal point, both objectives scaled to the trials' range")
    lines = [f"\nPareto front ({len(on)} of {sum(r['state'] == 'COMPLETE' for r in rows)} complete trials; "
             f"best/ is {rule}):", f"  {'trial':>5} {'score':>7} {'ms/image':>9}  params"]
    for r in on:
        mark = "  <- best/" if r["number"] == chosen else ""
        lines.append(f"  {r['number']:>5} {r['value']:>7.4f} {r['latency_ms']:>9.1f}  "
                     f"{_format_params(r['params'])}{mark}")
    return lines


def report_study(study_dir: str | Path, fmt: str = "table", storage: str | None = None) -> tuple[str, list[Path]]:
    """Trials table, best trial and plots (written to STUDY/plots/) of a study, finished or not."""
    directory = Path(study_dir)
    paths = StudyPaths(directory)
    study = load_study(directory, storage)
    rows = trial_rows(study)
    plots, skipped = plot_study(study, rows, paths.plots) if rows else ([], [])
    if fmt in ("json", "csv"):
        return format_trials(rows, fmt), plots
    result = summarize(study, directory)
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items()) or "no trials yet"
    parts = [f"study {result.name} ({directory}): {states}", format_trials(rows, fmt)]
    best = next((r for r in rows if r["number"] == result.best_trial), None)
    if best is not None:
        parts.append(f"\nbest trial {best['number']}: fold-mean score {best['value']:.4f} (the trials are ranked "
                     "by it: the same folds for every trial)" if best.get("latency_ms") is None else
                     f"\nbest trial {best['number']}: fold-mean score {best['value']:.4f} at {best['latency_ms']:.1f} "
                     "ms per image (chosen from the Pareto front below)")
        parts.append("  params: " + _format_params(best["params"]))
        if paths.ensemble.exists():
            parts += _published(paths, best)
    if len(study.directions) > 1:
        parts += _front(study, rows, result.best_trial, paths)
        plots = [*plots, *save_figures({"pareto_front": pareto_figure(rows, _front_numbers(study),
                                                                      result.best_trial)}, paths.plots)]
    if plots:
        parts.append("plots: " + ", ".join(str(p) for p in plots))
    parts += [f"not plotted yet: {s}" for s in skipped]
    return "\n".join(parts), plots
