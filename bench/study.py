"""Study throughput with 1 vs 2 parallel workers (target >= 1.8x trials per hour) and the share of a trial
spent outside training and evaluation (target <= 5%).

Each worker is a `detector study` process pinned to one CPU thread (OMP_NUM_THREADS=1), standing in for
"one GPU per worker". Every trial does the same work (the space only varies the score threshold), so the
speed-up measures coordination, not parameter-dependent trial lengths. The plain baseline is the same
k-fold run as two `detector cv` processes, one after the other vs side by side: how well this machine
runs two independent jobs at once. Outside time = a trial's wall time minus the train_seconds and
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

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def wall(commands: list[list[str]]) -> float:
    """Run the commands side by side; seconds until the last one ends."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(p.args)} failed:\n{err}")
    return time.perf_counter() - start


def sets_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


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
    cli = [sys.executable, "-m", "detector.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample_dataset(Path(tmp) / "data", SampleSpec(images=args.images))
        sets = [f"data.train.annotations={data['train']}", f"data.val.annotations={data['val']}",
                "train.epochs=2", "cv.folds=2", "search.pruner=none", "data.image_size=128",
                "search.space={eval.score_threshold: [0.3, 0.4, 0.5]}", *args.overrides]
        cv = lambda k: [*cli, "cv", "configs/sample.yaml", "--quiet", "--out", f"{tmp}/cv{k}", *sets_args(sets)]
        plain_seq = wall([cv(0)]) + wall([cv(1)])
        plain_par = wall([cv(2), cv(3)])
        study = lambda name: [*cli, "study", "configs/sample.yaml", "--name", name, "--quiet", "--studies-dir",
                              f"{tmp}/studies", "--n-trials", str(args.trials), *sets_args(sets)]
        one = wall([study("one")])
        two = wall([study("two"), study("two")])
        total, share = outside_share(Path(tmp) / "studies" / "one")
    machine, ours = plain_seq / plain_par, one / two
    print(f"plain baseline, two `detector cv` runs: {plain_seq:.1f} s one after the other, {plain_par:.1f} s side "
          f"by side: this machine runs two jobs {machine:.2f}x as fast as one")
    print(f"study, {args.trials} trials: 1 worker {one:.1f} s ({args.trials / one * 3600:.0f} trials/hour), "
          f"2 workers {two:.1f} s ({args.trials / two * 3600:.0f} trials/hour)")
    print(f"speed-up with 2 workers: {ours:.2f}x (target >= 1.8x); {100 * ours / machine:.1f}% of the "
          f"machine's {machine:.2f}x")
    print(f"share of trial time outside training and evaluation: {100 * share:.2f}% of {total:.1f} s "
          "(target <= 5%)")


if __name__ == "__main__":
    main()
