"""Every plot detector draws, each on a `matplotlib.figure.Figure` of its own.

No pyplot and no backend choice: drawing is safe in any process, thread or notebook, and a figure is freed
when it is dropped. Functions take plain rows and return figures; `save_figures` writes them as PNG.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .training.metric_log import LOSS_KEYS

LOSS_PANELS = LOSS_KEYS


def save_figures(figures: dict[str, Figure], out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """Write each figure as OUT_DIR/NAME.png; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=dpi)
        paths.append(out_dir / f"{name}.png")
    return paths


def run_figures(rows: list[dict[str, Any]]) -> dict[str, Figure]:
    """Losses, map_50, f1 and score vs epoch from metrics.csv rows, one line per fold."""
    panels = {"losses": LOSS_PANELS, "map_50": ("map_50",), "f1": ("f1",), "score": ("score",)}
    folds = sorted({r.get("fold", 0) for r in rows})
    figures = {}
    for name, keys in panels.items():
        fig = Figure(figsize=(4 * len(keys), 3.2))
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            for fold in folds:
                points = [(r["epoch"], r[key]) for r in rows if r.get("fold", 0) == fold and key in r]
                if points:
                    ax.plot(*zip(*points), marker="o", ms=3, label=f"fold {fold}")
            ax.set(title=key, xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        figures[name] = fig
    return figures


def confusion_figure(classes: Sequence[str], counts: Sequence[Sequence[int]], title: str) -> Figure:
    """A confusion matrix (rows: ground truth, columns: prediction, background last), each cell's count
    written in it, the colour its share of its row."""
    n = len(classes)
    fig = Figure(figsize=(1.2 + 0.8 * n, 1.0 + 0.7 * n))
    ax = fig.add_subplot()
    share = [[v / max(sum(row), 1) for v in row] for row in counts]
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(counts):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if share[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted (background: missed)")
    ax.set_ylabel("ground truth (background: false detection)")
    ax.set_title(title)
    return fig


def pr_figure(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str) -> Figure:
    """Precision-recall curves, {class name: (recall, precision)}."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def study_figures(trials: list[dict[str, Any]], importances: dict[str, float] | None) -> dict[str, Figure]:
    """A study's plots from its trial rows (search.report.trial_rows) and parameter importances (None when
    they cannot be computed yet): history, intermediate values, importances, parallel coordinates."""
    complete = [t for t in trials if t["state"] == "COMPLETE" and _finite(t["value"])]
    figures = {"history": _history(complete)}
    if any(t.get("intermediate") for t in trials):  # none in a two-objective study (no pruning)
        figures["intermediate_values"] = _intermediate(trials)
    if importances:
        figures["param_importances"] = _importances(importances)
    if complete and complete[0]["params"]:
        figures["parallel_coordinate"] = _parallel(complete)
    return figures


def pareto_figure(trials: list[dict[str, Any]], front: set[int], chosen: int | None) -> Figure:
    """A score-latency study: every complete trial's ms per image and fold-mean score, the Pareto front
    joined and numbered, best/'s trial ringed."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    complete = [t for t in trials if t["state"] == "COMPLETE" and t.get("latency_ms") is not None]
    ax.scatter([t["latency_ms"] for t in complete], [t["value"] for t in complete], s=18, color="C7",
               label="trial")
    on = sorted((t for t in complete if t["number"] in front), key=lambda t: t["latency_ms"])
    ax.plot([t["latency_ms"] for t in on], [t["value"] for t in on], "o-", color="C0", ms=5, label="Pareto front")
    for t in on:
        ax.annotate(str(t["number"]), (t["latency_ms"], t["value"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    for t in complete:
        if t["number"] == chosen:
            ax.scatter([t["latency_ms"]], [t["value"]], s=160, facecolors="none", edgecolors="C3", label="best/")
    ax.set(xlabel="ms per image (its ensemble, the study's device)", ylabel="fold-mean score",
           title="score against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _history(complete: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    numbers, values = [t["number"] for t in complete], [t["value"] for t in complete]
    ax.scatter(numbers, values, s=18, label="trial value")
    best = [max(values[: i + 1]) for i in range(len(values))]
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="value (held-out ensemble score)", title="optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _intermediate(trials: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for t in trials:
        steps = sorted((t.get("intermediate") or {}).items())
        if steps:
            ax.plot([s for s, _ in steps], [v for _, v in steps], marker="o", ms=3, alpha=0.8,
                    linestyle="--" if t["state"] == "PRUNED" else "-", label=f"trial {t['number']}")
    ax.set(xlabel="step (fold * epochs + epoch)", ylabel="fold-mean score", title="intermediate values")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    return fig


def _importances(importances: dict[str, float]) -> Figure:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    names = sorted(importances, key=importances.get)
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA)", title="parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _parallel(complete: list[dict[str, Any]]) -> Figure:
    """One vertical axis per parameter (scaled to [0, 1]; log ranges on a log scale), one line per trial."""
    keys = sorted({k for t in complete for k in t["params"]})
    columns = [_scaled([t["params"].get(k) for t in complete]) for k in keys]
    values = [t["value"] for t in complete]
    low, high = min(values), max(values)
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    norm = Normalize(low, high if high > low else low + 1e-9)
    colors = colormaps["viridis"]
    for i, value in enumerate(values):
        ax.plot(range(len(keys)), [c[0][i] for c in columns], color=colors(norm(value)), alpha=0.8)
    ax.set_xticks(range(len(keys)), [k.rsplit(".", 1)[-1] for k in keys], rotation=20)
    for x, (_, labels) in enumerate(columns):
        for y, text in labels:
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, 0), textcoords="offset points", va="center")
    ax.set(ylim=(-0.05, 1.05), yticks=[], title="parallel coordinates (colour: value)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=colors), ax=ax)
    return fig


def _scaled(column: list[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Values mapped to [0, 1] (numbers by range, log-spaced when they span a decade; other values by
    rank) and the labels to print at the ends."""
    numbers = [v for v in column if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(column) and numbers:
        log = min(numbers) > 0 and max(numbers) / min(numbers) >= 10
        f = (lambda v: math.log10(v)) if log else float
        lo, hi = f(min(numbers)), f(max(numbers))
        span = hi - lo or 1.0
        return [(f(v) - lo) / span for v in column], [(0.0, f"{min(numbers):.3g}"), (1.0, f"{max(numbers):.3g}")]
    choices = sorted({str(v) for v in column})
    where = {c: i / max(len(choices) - 1, 1) for i, c in enumerate(choices)}
    return [where[str(v)] for v in column], [(y, c) for c, y in where.items()]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
