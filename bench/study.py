"""Study throughput with 1 vs 2 parallel workers (target >= 1.8x trials per hour) and the share of a trial
spent outside training and evaluation (target <= 5%).

Each worker is a `detector study` process pinned to one CPU thread (OMP_NUM_THREADS=1), standing in for
"one GPU per worker"; both studies use the same tiny trials on generated sample data and their own
SQLite storage in a temporary folder. Outside time = a trial's wall time minus the train_seconds and
eval_seconds of its epochs (metrics.csv) and its held-out ensemble evaluation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from detector.data.sample import SampleSpec, write_sample_dataset
from detector.report import read_metric_rows


def run_workers(workers: int, n_trials: int, data: dict, studies: Path, name: str, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "detector.cli", "study", "configs/quickstart.yaml", "--name", name, "--quiet",
           "--studies-dir", str(studies), "--n-trials", str(n_trials),
           *[a for s in [f"data.train.annotations={data['train']}", f"data.val.annotations={data['val']}", *sets]
             for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed:\n{err}")
    return time.perf_counter() - start


def outside_share(study_dir: Path) -> tuple[float, float]:
    study = optuna.load_study(study_name=study_dir.name, storage=f"sqlite:///{study_dir / 'study.db'}")
    total = inside = 0.0
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        rows = read_metric_rows(study_dir / t.user_attrs["run_dir"])
        total += t.user_attrs["seconds"]
        inside += sum(r["train_seconds"] + r["eval_seconds"] for r in rows) + t.user_attrs["heldout_seconds"]
    return total, (total - inside) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4, help="trials per study")
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    sets = ["train.epochs=2", "cv.folds=2", "search.pruner=none", "data.image_size=128", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample_dataset(Path(tmp) / "data", SampleSpec(images=args.images))
        studies = Path(tmp) / "studies"
        one = run_workers(1, args.trials, data, studies, "one", sets)
        two = run_workers(2, args.trials, data, studies, "two", sets)
        total, share = outside_share(studies / "one")
    rate1, rate2 = args.trials / one * 3600, args.trials / two * 3600
    print(f"1 worker: {args.trials} trials in {one:.1f} s ({rate1:.0f} trials/hour)")
    print(f"2 workers: {args.trials} trials in {two:.1f} s ({rate2:.0f} trials/hour)")
    print(f"speed-up with 2 workers: {rate2 / rate1:.2f}x (target >= 1.8x)")
    print(f"share of trial time outside training and evaluation: {100 * share:.2f}% of {total:.1f} s "
          "(target <= 5%)")


if __name__ == "__main__":
    main()
