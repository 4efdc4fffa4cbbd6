"""Reading run logs and turning them into tables and plots a person reads."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from .files import read_json


def format_metrics(m: dict[str, Any]) -> str:
    lines = [
        f"mAP@[.5:.95] {m['map']:.4f}   mAP@0.5 {m['map_50']:.4f}   mAP@0.75 {m['map_75']:.4f}",
        f"at score >= {m.get('score_threshold', float('nan')):.2f}, IoU >= {m.get('iou_threshold', 0.5):.2f}: "
        f"precision {m['precision']:.4f}   recall {m['recall']:.4f}   F1 {m['f1']:.4f}",
        f"score (w_map * mAP@0.5 + w_f1 * F1): {m['score']:.4f}",
        "",
        f"{'class':<20} {'id':>4} {'boxes':>6} {'AP':>7} {'AP50':>7} {'prec':>7} {'recall':>7} {'F1':>7}",
    ]
    for name, c in m["per_class"].items():
        lines.append(f"{name:<20} {c['category_id']:>4} {c['num_gt']:>6} {c['ap']:>7.4f} {c['ap50']:>7.4f} "
                     f"{c['precision']:>7.4f} {c['recall']:>7.4f} {c['f1']:>7.4f}")
    return "\n".join(lines)


FOLD_COLUMNS = ("map_50", "f1", "precision", "recall", "score")


def format_cv(folds: list[dict[str, Any]], mean: dict[str, float], std: dict[str, float],
              fmt: str = "table") -> str:
    """Per-fold best epoch and metrics with mean +- std, as table, markdown, csv or json."""
    header = ("fold", "best_epoch", *FOLD_COLUMNS)
    rows = [[str(f["fold"]), str(f["best_epoch"]), *(f"{f['metrics'].get(k, float('nan')):.4f}" for k in FOLD_COLUMNS)]
            for f in folds]
    rows.append(["mean+-std", "", *(f"{mean[k]:.4f}+-{std[k]:.4f}" for k in FOLD_COLUMNS)])
    if fmt == "json":
        import json
        return json.dumps({"folds": folds, "mean": mean, "std": std}, indent=2)
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


def read_metric_rows(run: Path) -> list[dict[str, Any]]:
    """Every row of every fold_K/metrics.csv (or RUN/metrics.csv for a single run), numbers parsed."""
    paths = sorted(run.glob("fold_*/metrics.csv")) or [run / "metrics.csv"]
    rows = []
    for path in paths:
        if path.exists():
            with path.open(newline="") as f:
                rows += [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNG plots of losses, map_50, f1 and score vs epoch, one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = {"losses": ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
              "map_50": ("map_50",), "f1": ("f1",), "score": ("score",)}
    folds = sorted({r.get("fold", 0) for r in rows})
    for name, keys in panels.items():
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for fold in folds:
                pts = [(r["epoch"], r[key]) for r in rows if r.get("fold", 0) == fold and key in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=f"fold {fold}")
            ax.set_title(key)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _number(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def report_run(run: Path, fmt: str = "table") -> tuple[str, list[Path]]:
    """Text report of a cv run (finished or not) and the plots written to RUN/plots/."""
    from .cv import read_summary

    summary = read_summary(run)
    rows = read_metric_rows(run)
    plots = plot_curves(rows, run / "plots") if rows else []
    if summary.folds:
        best = max(summary.folds, key=lambda f: f["metrics"].get("score", float("-inf")))
        path = plot_pr_curves(run, best["fold"], run / "plots")
        plots += [path] if path else []
    if fmt == "json":
        import json
        return json.dumps({"folds": summary.folds, "mean": summary.mean, "std": summary.std,
                           "top_models": summary.top_models}, indent=2), plots
    if fmt == "csv":
        return format_cv(summary.folds, summary.mean, summary.std, fmt), plots
    parts = [f"{run}: {len(summary.folds)} fold(s) finished, {len(rows)} epoch rows",
             format_cv(summary.folds, summary.mean, summary.std, fmt)]
    if summary.folds:
        best = max(summary.folds, key=lambda f: f["metrics"].get("score", float("-inf")))
        parts.append(f"\nper-class AP of the best fold model (fold {best['fold']}, epoch {best['best_epoch']}):")
        parts += [f"  {name:<20} AP {c['ap']:.4f}  AP50 {c['ap50']:.4f}  F1 {c['f1']:.4f}"
                  for name, c in best["metrics"].get("per_class", {}).items()]
        anchors = [f for f in summary.folds if f.get("anchors")]
        for f in anchors:
            a = f["anchors"]
            parts.append(f"fold {f['fold']} anchors: mean IoU {a['fitness']['mean_iou']:.3f} "
                         f"(default {a['default_fitness']['mean_iou']:.3f}), best possible recall "
                         f"{a['fitness']['bpr']:.3f} (default {a['default_fitness']['bpr']:.3f})")
    if plots:
        parts.append("plots: " + ", ".join(str(p) for p in plots))
    return "\n".join(parts), plots


def plot_pr_curves(run: Path, fold: int, out_dir: Path) -> Path | None:
    """Per-class precision-recall curves (IoU 0.5) of a fold's best model on that fold's validation part."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import config as config_mod
    from .data.coco import load_coco
    from .metrics import pr_curves

    predictions = run / f"fold_{fold}" / "best_predictions.json"
    if not predictions.exists() or not (run / "folds.json").exists():
        return None
    cfg = config_mod.load(run / "config.yaml")
    index = load_coco(cfg.data.train.annotations, cfg.data.train.images_dir, check_images=False,
                      drop_placeholder_categories=cfg.data.drop_placeholder_categories)
    val = index.subset(read_json(run / "folds.json")["folds"][fold])
    curves = pr_curves(val.to_coco(), read_json(predictions))
    names = dict(zip(index.label_map.category_ids, index.label_map.names))
    fig, ax = plt.subplots(figsize=(5, 4))
    for cid, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=names.get(cid, str(cid)))
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"fold {fold} best model, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pr_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_trials(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The trials of a study (search.trial_rows) as table, markdown, csv or json, best trial last."""
    if fmt == "json":
        import json
        return json.dumps(rows, indent=2)
    keys = sorted({k for r in rows for k in r["params"]})
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    header = ("trial", "state", "value", "map_50", "f1", "members", "cv_score", "seconds",
              *(short[k] for k in keys), "note")
    table = []
    for r in rows:
        ens, cv = r["ensemble"] or {}, r["cv_mean"] or {}
        note = r["fail_reason"] or (f"retry of {r['retry_of']}" if r["retry_of"] is not None else "")
        if r["state"] == "PRUNED" and r["last_step"] is not None:
            note = f"pruned at step {r['last_step']}"
        table.append([str(r["number"]), r["state"].lower(), _num(r["value"]), _num(ens.get("map_50")),
                      _num(ens.get("f1")), "/".join(_num(m.get("score")) for m in r["members"]),
                      _num(cv.get("score")), _num(r["seconds"], 0),
                      *(_param(r["params"].get(k)) for k in keys), note])
    return render_table(header, table, fmt)


def _num(v: Any, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _param(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_comparison(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Metrics of an ensemble next to each member's, then per-class AP50 and F1 side by side."""
    keys = ("map", "map_50", "map_75", "precision", "recall", "f1", "score")
    overall = render_table(("model", *keys), [[name, *(f"{m[k]:.4f}" for k in keys)] for name, m in rows])
    header = ["class", *(f"{name} {k}" for name, _ in rows for k in ("AP50", "F1"))]
    per_class = [[c, *(f"{m['per_class'][c][k]:.4f}" for _, m in rows for k in ("ap50", "f1"))]
                 for c in rows[0][1]["per_class"]]
    return overall + "\n\n" + render_table(header, per_class)
