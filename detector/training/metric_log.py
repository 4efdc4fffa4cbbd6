"""metrics.csv, the per-epoch log of a run: one row per epoch, written as the run goes and rewritten from the
checkpoint's history on resume, and read back with numbers parsed."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..files import writing
from ..layout import RunPaths
from ..metrics import METRIC_KEYS, Metrics

LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")  # the epoch's means
CSV_COLUMNS = ("epoch", "lr", *LOSS_KEYS, *METRIC_KEYS, "image_size", "train_seconds", "eval_seconds",
               "checkpoint_seconds", "seconds")


def epoch_row(epoch: int, lr: float, losses: dict[str, float], metrics: Metrics, image_size: int,
              eval_seconds: float) -> dict[str, Any]:
    """One epoch's row: what train_one_epoch and the validation returned. Callbacks add to it (the fold
    column, checkpoint_seconds) before it is written."""
    return {"epoch": epoch, "lr": lr, **{k: losses.get(k, 0.0) for k in LOSS_KEYS}, **metrics.summary(),
            "image_size": image_size, "train_seconds": losses["train_seconds"], "eval_seconds": eval_seconds,
            "checkpoint_seconds": 0.0, "seconds": losses["train_seconds"] + eval_seconds,
            "skipped_steps": losses.get("skipped_steps", 0)}


def append_row(path: Path, row: dict[str, Any], columns: tuple[str, ...]) -> None:
    new = not path.exists()
    with writing(path), path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in columns})


def rewrite_rows(path: Path, history: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """On resume: the log holds exactly the epochs the checkpoint has (a kill may have cut it either way).
    A log that already does, whole rows ending in a newline, is left as it is: its timings are the ones
    measured (the checkpoint cannot hold the time it took to write itself)."""
    if _holds_exactly(path, [h["epoch"] for h in history], columns):
        return
    path.unlink(missing_ok=True)
    for row in history:
        append_row(path, row, columns)


def _holds_exactly(path: Path, epochs: list[int], columns: tuple[str, ...]) -> bool:
    if not path.exists():
        return not epochs
    text = path.read_text()
    if not text.endswith("\n"):
        return False
    reader = csv.DictReader(text.splitlines())
    rows = list(reader)
    return (tuple(reader.fieldnames or ()) == columns and [r.get("epoch") for r in rows] == [str(e) for e in epochs]
            and all(None not in r and None not in r.values() for r in rows))


def read_metric_rows(run: Path) -> list[dict[str, Any]]:
    """Every row of every fold_K/metrics.csv (or RUN/metrics.csv for a single run), numbers parsed."""
    run_paths = RunPaths(run)
    paths = [f.metrics for _, f in run_paths.fold_runs()] or [run_paths.metrics]
    rows = []
    for path in paths:
        if path.exists():
            with path.open(newline="") as f:
                rows += [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows


def _number(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
