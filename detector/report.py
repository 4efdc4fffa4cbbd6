"""Reading run logs and turning them into tables and plots a person reads."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .files import read_json
from .training.metric_log import read_metric_rows
from .layout import RunPaths
from .analysis.confusion import ConfusionMatrix
from .analysis.error_breakdown import CAUSES, Breakdown
from .analysis.scorecard import Scorecard
from .intervals import Difference, format_interval
from .metrics import SIZES, Metrics, OperatingPoint
from .training.summary import FoldSummary
from .plots import pr_figure, run_figures, save_figures

if TYPE_CHECKING:
    from .analysis.evaluate import HeldOutResult
    from .selection import Selection


def format_metrics(card: Scorecard) -> str:
    """evaluate's report: every metric with its interval, by size, per class, the confusion matrix and the
    error breakdown."""
    m = card.metrics
    iv = lambda k: format_interval(m.value(k), m.interval(k))
    lines = [
        f"mAP@[.5:.95] {iv('map')}   mAP@0.5 {iv('map_50')}   mAP@0.75 {iv('map_75')}",
        f"at score >= {card.thresholds.default:.2f}, IoU >= {card.iou_threshold:.2f}: "
        f"precision {m.precision:.4f}   recall {m.recall:.4f}   F1 {iv('f1')}",
        f"score (w_map * mAP@0.5 + w_f1 * F_beta): {iv('score')}",
        *([f"[low, high]: {m.bootstrap}"] if m.intervals else []),
        "by object size (area in the image's pixels: small < 32^2 <= medium < 96^2 <= large; - = no box that size):",
        "  AP " + "   ".join(f"{s} {_cell(m.value(f'map_{s}'))}" for s in SIZES)
        + "      AR " + "   ".join(f"{s} {_cell(m.value(f'mar_{s}'))}" for s in SIZES),
        f"  AR@1 {_cell(m.value('mar_1'))}   AR@10 {_cell(m.value('mar_10'))}   AR@100 {_cell(m.value('mar_100'))}",
        "",
        f"{'class':<20} {'id':>4} {'boxes':>6} {'AP':>7} {'AP50':>7} {'AP_S':>7} {'AP_M':>7} {'AP_L':>7} "
        f"{'prec':>7} {'recall':>7} {'F1':>7}",
    ]
    for name, c in m.per_class.items():
        sizes = " ".join(f"{_cell(c.size(f'ap_{s}')):>7}" for s in SIZES)
        lines.append(f"{name:<20} {c.category_id:>4} {c.num_gt:>6} {c.ap:>7.4f} {c.ap50:>7.4f} {sizes} "
                     f"{c.precision:>7.4f} {c.recall:>7.4f} {c.f1:>7.4f}")
    if card.confusion:
        lines += ["", format_confusion(card.confusion)]
    if card.errors:
        lines += ["", format_errors(card.errors)]
    return "\n".join(lines)


def format_errors(errors: Breakdown) -> str:
    """The error breakdown: per cause its count at the operating point and the mAP@0.5 fixing it would gain."""
    rows = [[kind, str(errors.counts.get(kind, 0)), f"{errors.gains.get(kind, 0.0):+.4f}"] for kind in CAUSES]
    return (f"where the errors come from (mAP@0.5 {errors.map_50:.4f}; count at the operating point, and the "
            "mAP@0.5 fixing every one of them gains):\n" + render_table(("cause", "count", "mAP@0.5 gain"), rows))


def format_confusion(matrix: ConfusionMatrix) -> str:
    """The confusion matrix as a table under its reading guide."""
    return (f"confusion matrix at the operating point (IoU >= {matrix.iou_threshold:.2f}; rows: ground truth, "
            "columns: prediction; background row: false detections, background column: missed boxes):\n"
            + matrix.table())


FOLD_COLUMNS = ("map_50", "f1", "precision", "recall", "score")
PUBLISHED_COLUMNS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "precision", "recall", "f1",
                     "score", "threshold")
COMPARED_COLUMNS = PUBLISHED_COLUMNS[:-1] + ("mar_100", "threshold")


def format_published(heldout: HeldOutResult, fold_mean: Metrics | None = None, fmt: str = "table") -> str:
    """The published models on data.val (a run's or study's heldout.json): each candidate member alone at its
    own tuned threshold and what was published at its operating point, below the folds' estimate (each fold's
    best epoch on its own validation images: other images, so a guide rather than a comparison); then their
    intervals and why these members were published."""
    rows = []
    if fold_mean:
        rows.append(["fold estimate (mean)", *(_cell(fold_mean.value(k)) for k in PUBLISHED_COLUMNS)])
    named = []
    for m in heldout.members:
        name = m.name + (" (published)" if m.published else "")
        named.append((name, m.metrics))
        rows.append([name, *(_cell(dataclasses.replace(m.metrics, threshold=m.score_threshold).value(k))
                             for k in PUBLISHED_COLUMNS)])
    e, chosen = heldout.ensemble, heldout.operating_point.members
    published = (f"published: fusion of {len(chosen)}" if chosen and len(chosen) > 1 else
                 f"published: member {chosen[0]} alone" if chosen else f"ensemble of {len(heldout.members)}")
    named.append((published, e.metrics))
    at_point = dataclasses.replace(e.metrics, threshold=heldout.operating_point.thresholds.default)
    rows.append([published, *(_cell(at_point.value(k)) for k in PUBLISHED_COLUMNS)])
    title = f"published models on data.val ({e.annotations or '?'}, {e.images} images):\n"
    table = render_table(("model", *PUBLISHED_COLUMNS), rows, fmt)
    if fmt != "table":
        return table
    parts = [title + table]
    if e.metrics.intervals:
        parts.append(format_intervals(named))
    if heldout.selection:
        parts.append(format_selection(heldout.selection))
    if e.confusion:
        parts.append(f"the published models' {format_confusion(e.confusion)}")
    if e.errors:
        parts.append(f"the published models' errors: {format_errors(e.errors)}")
    return "\n\n".join(parts)


def format_selection(selection: Selection) -> str:
    """Why these members were published: each fusion tried minus the best member alone on data.val."""
    best = selection.best_member
    lines = [f"published: {selection.reason}", f"each fusion tried minus member {best} alone ({selection.bootstrap}):"]
    for o in selection.options:
        cells = "; ".join(f"{k} {d.value:+.4f} [{d.interval.low:+.4f}, {d.interval.high:+.4f}] {d.verdict}"
                          for k, d in o.versus_best.items() if k in ("map", "map_50", "score"))
        lines.append(f"  members {', '.join(map(str, o.members))}: {cells}" + ("  <- passes" if o.passes else ""))
    return "\n".join(lines)


def strict_json(value: Any) -> Any:
    """A value for strict JSON readers (jq, JavaScript): NaN (a size no box has) becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _cell(value: Any) -> str:
    """A number to 4 places; '-' for none, and for NaN (a size no box has, a metric not measured)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not math.isnan(value) else "-"


def format_cv(folds: Sequence[FoldSummary], mean: Metrics, std: Metrics, fmt: str = "table") -> str:
    """Per-fold best epoch and metrics with mean +- std, as table, markdown, csv or json."""
    header = ("fold", "best_epoch", *FOLD_COLUMNS)
    rows = [[str(f.fold), str(f.best_epoch), *(f"{f.metrics.value(k):.4f}" for k in FOLD_COLUMNS)] for f in folds]
    rows.append(["mean+-std", "", *(f"{mean.value(k):.4f}+-{std.value(k):.4f}" for k in FOLD_COLUMNS)])
    if fmt == "json":
        import json
        return json.dumps(strict_json({"folds": [f.to_dict() for f in folds], "mean": mean.to_dict(),
                                       "std": std.to_dict()}), indent=2)
    return render_table(header, rows, fmt)


def render_table(header: Sequence[str], rows: list[list[str]], fmt: str = "table") -> str:
    """Rows of strings as an aligned text table, a markdown table or csv."""
    if fmt == "csv":
        import csv
        import io
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue().rstrip("\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    if fmt == "markdown":
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), *map(line, rows)])


def report_run(run: Path, fmt: str = "table") -> tuple[str, list[Path]]:
    """Text report of a cv run (finished or not) and the plots written to RUN/plots/."""
    from .training.cv import read_summary

    summary = read_summary(run)
    rows = read_metric_rows(run)
    figures = run_figures(rows) if rows else {}
    best = max(summary.folds, key=_fold_score, default=None)
    if best is not None:
        curves = pr_curves_of_fold(run, best.fold)
        if curves:
            figures["pr_curves"] = pr_figure(curves, f"fold {best.fold} best model, IoU 0.5")
    plots = save_figures(figures, RunPaths(run).plots) if figures else []
    if fmt == "json":
        import json
        return json.dumps(strict_json({"folds": [f.to_dict() for f in summary.folds], "mean": summary.mean.to_dict(),
                                       "std": summary.std.to_dict(),
                                       "top_models": [e.to_dict() for e in summary.top_models]}), indent=2), plots
    if fmt == "csv":
        return format_cv(summary.folds, summary.mean, summary.std, fmt), plots
    parts = [f"{run}: {len(summary.folds)} fold(s) finished, {len(rows)} epoch rows",
             format_cv(summary.folds, summary.mean, summary.std, fmt)]
    if best is not None:
        parts.append(f"\nper-class AP of the best fold model (fold {best.fold}, epoch {best.best_epoch}):")
        parts += [f"  {name:<20} AP {c.ap:.4f}  AP50 {c.ap50:.4f}  F1 {c.f1:.4f}"
                  for name, c in best.metrics.per_class.items()]
        paths = RunPaths(run)
        if paths.heldout.exists():  # refit members, tuned on data.val
            parts.append("\n" + format_published(read_heldout(paths.heldout), summary.mean, fmt))
            parts.append(worst_line(paths.heldout, paths.heldout_predictions, paths.plots))
        if paths.operating_point.exists():
            p = OperatingPoint.from_dict(read_json(paths.operating_point))
            where = "data.val" if paths.heldout.exists() else "out-of-fold"
            parts.append(f"\noperating point of the published models ({where}, {p.images} images): threshold "
                         f"{p.thresholds.default:.3f}, score {p.score:.4f}")
            parts.append(format_per_class(p.metrics))
        for f in summary.folds:
            if not f.anchors:
                continue
            a = f.anchors
            parts.append(f"fold {f.fold} anchors: mean IoU {a['fitness']['mean_iou']:.3f} "
                         f"(default {a['default_fitness']['mean_iou']:.3f}), best possible recall "
                         f"{a['fitness']['bpr']:.3f} (default {a['default_fitness']['bpr']:.3f})")
    if plots:
        parts.append("plots: " + ", ".join(str(p) for p in plots))
    return "\n".join(parts), plots


def _fold_score(f: FoldSummary) -> float:
    return f.metrics.score if math.isfinite(f.metrics.score) else -math.inf


def read_heldout(path: Path) -> "HeldOutResult":
    """heldout.json as its record."""
    from .analysis.evaluate import HeldOutResult

    return HeldOutResult.from_dict(read_json(path))


def worst_line(heldout: Path, predictions: Path, plots: Path) -> str:
    """Draws the published ensemble's worst images on data.val into PLOTS/worst/ and says where they are."""
    from .analysis.evaluate import draw_heldout_worst

    drawn = draw_heldout_worst(heldout, predictions, plots) if predictions.exists() else []
    if not drawn:
        return "worst images: none drawn (no stored data.val predictions, no errors, or data.val has moved)"
    return (f"worst images on data.val (most errors at the operating point; ground truth white, errors by cause "
            f"in the corner): {len(drawn)} in {drawn[0].parent}/")


def pr_curves_of_fold(run: Path, fold: int) -> dict[str, tuple[list[float], list[float]]] | None:
    """Per-class precision-recall curves (IoU 0.5) of a fold's best model on that fold's validation part."""
    from . import config as config_mod
    from .data.coco import load_coco
    from .metrics import pr_curves

    paths = RunPaths(run)
    predictions = paths.fold(fold).best_predictions
    if not predictions.exists() or not paths.folds.exists():
        return None
    cfg = config_mod.load(paths.config)
    index = load_coco(cfg.data.train.annotations, cfg.data.train.images_dir, check_images=False,
                      drop_placeholder_categories=cfg.data.drop_placeholder_categories)
    val = index.subset(read_json(paths.folds)["folds"][fold])
    names = dict(zip(index.label_map.category_ids, index.label_map.names))
    return {names.get(cid, str(cid)): curve for cid, curve in pr_curves(val.to_coco(), read_json(predictions)).items()}


def format_trials(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The trials of a study (search.trial_rows) as table, markdown, csv or json: value, map_50, map and f1
    are fold means (every trial on the same folds), best_epochs each fold's best epoch."""
    if fmt == "json":
        import json
        return json.dumps(strict_json(rows), indent=2)
    keys = sorted({k for r in rows for k in r["params"]})
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    timed = any(r.get("latency_ms") is not None for r in rows)
    header = ("trial", "state", "value", *(("ms/image",) if timed else ()), "map_50", "map", "f1", "best_epochs",
              "seconds", *(short[k] for k in keys), "note")
    table = []
    for r in rows:
        cv = Metrics.from_dict(r["cv_mean"] or {})
        note = r["fail_reason"] or (f"retry of {r['retry_of']}" if r["retry_of"] is not None else "")
        if r["state"] == "PRUNED" and r["last_step"] is not None:
            note = f"pruned at step {r['last_step']}"
        if r.get("start"):
            note = ("the config's own values; " + note).rstrip("; ")
        table.append([str(r["number"]), r["state"].lower(), _num(r["value"]),
                      *((_num(r.get("latency_ms"), 1),) if timed else ()), _num(cv.map_50),
                      _num(cv.map), _num(cv.f1), "/".join(str(e) for e in r.get("best_epochs") or []),
                      _num(r["seconds"], 0), *(_param(r["params"].get(k)) for k in keys), note])
    return render_table(header, table, fmt)


def _num(v: Any, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _param(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_per_class(m: Metrics) -> str:
    """Per class at the operating point: boxes, threshold, precision, recall, F1 and AP50 (the table the
    seed recipe printed with scikit-learn's classification_report)."""
    header = ("class", "boxes", "threshold", "precision", "recall", "f1", "ap50")
    rows = [[name, str(c.num_gt), f"{c.score_threshold:.3f}", f"{c.precision:.4f}", f"{c.recall:.4f}",
             f"{c.f1:.4f}", f"{c.ap50:.4f}"] for name, c in m.per_class.items()]
    rows.append(["all", str(m.num_gt), "", f"{m.precision:.4f}", f"{m.recall:.4f}", f"{m.f1:.4f}", f"{m.map_50:.4f}"])
    return render_table(header, rows)


def format_comparison(rows: list[tuple[str, Scorecard]]) -> str:
    """Metrics of an ensemble next to each member's (with their intervals, and the ensemble's paired
    difference to each), then per-class AP50 and F1 side by side."""
    keys = COMPARED_COLUMNS
    overall = render_table(("model", *keys), [[name, *(_cell(c.metrics.value(k)) for k in keys)] for name, c in rows])
    header = ["class", *(f"{name} {k}" for name, _ in rows for k in ("AP50", "F1"))]
    per_class = [[name, *(f"{x:.4f}" for _, c in rows for x in (c.metrics.per_class[name].ap50,
                                                               c.metrics.per_class[name].f1))]
                 for name in rows[0][1].metrics.per_class]
    parts = [overall]
    ensemble = rows[0][1]
    if ensemble.metrics.intervals:
        parts.append(format_intervals([(name, c.metrics) for name, c in rows]))
    for (name, _), diffs in zip(rows[1:], ensemble.versus_members):
        parts.append(f"{rows[0][0]} minus {name} on the same images:\n" + format_differences(diffs))
    return "\n\n".join(parts + [render_table(header, per_class)])


INTERVAL_COLUMNS = ("map", "map_50", "map_75", "f1")


def format_intervals(rows: Sequence[tuple[str, Metrics]], fmt: str = "table") -> str:
    """Each model's mAP, mAP@0.5, mAP@0.75 and F1 with their bootstrap intervals."""
    table = render_table(("model", *INTERVAL_COLUMNS), [
        [name, *(format_interval(m.value(k), m.interval(k)) for k in INTERVAL_COLUMNS)] for name, m in rows], fmt)
    described = next((m.bootstrap for _, m in rows if m.bootstrap), None)
    return table + (f"\n[low, high]: {described}" if described and fmt == "table" else "")


def format_differences(diffs: dict[str, Difference], fmt: str = "table") -> str:
    """A paired comparison (intervals.compare): per metric both values, the difference, its interval and the
    word for it."""
    rows = [[k, f"{d.a:.4f}", f"{d.b:.4f}", f"{d.value:+.4f}", f"[{d.interval.low:+.4f}, {d.interval.high:+.4f}]",
             d.verdict] for k, d in diffs.items()]
    return render_table(("metric", "A", "B", "A - B", "95% interval", "verdict"), rows, fmt)
