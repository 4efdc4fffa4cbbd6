"""Several processes on one run under torchrun (gloo on CPU): the same training as one process, rank 0
alone writing, and a resume after a kill."""
import csv
import os
import subprocess
import sys

import pytest

from detector.checkpoint import load_checkpoint
from detector.layout import RunPaths
from tests.helpers import wait_until
from tests.test_train import TINY


def sets(sample, *extra):
    values = [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}", *TINY,
              "model.frozen_bn=true", "train.seed=0", *extra]
    return [a for v in values for a in ("--set", v)]


def command(tmp_path, nproc, verb, out, sample, *extra):
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*(launcher if nproc > 1 else [sys.executable]), "-m", "detector.cli", verb, str(config),
            *sets(sample, *extra), "--out", str(out), "--quiet"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_train_one_epoch_like_one_process_with_the_same_global_batch(sample, tmp_path):
    for nproc, out in ((1, "one"), (2, "two")):
        done = subprocess.run(command(tmp_path, nproc, "train", tmp_path / out, sample, "train.epochs=1"),
                              capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = rows(RunPaths(tmp_path / "one").metrics), rows(RunPaths(tmp_path / "two").metrics)
    assert len(one) == len(two) == 1  # rank 1 wrote no row of its own
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # Stated tolerance: the two runs see the same images in the same global batches, but RPN and RoI sampling
    # draw from each process's generator and torchvision normalises some losses per batch, so they agree
    # closely, not bit for bit.
    assert float(two[0]["loss"]) == pytest.approx(float(one[0]["loss"]), rel=0.05)
    a, b = load_checkpoint(RunPaths(tmp_path / "one").last).model, load_checkpoint(RunPaths(tmp_path / "two").last).model
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    difference = sum(((a[k] - b[k]) ** 2).sum() for k in keys) ** 0.5 / sum((a[k] ** 2).sum() for k in keys) ** 0.5
    assert difference < 0.02


@pytest.mark.slow
def test_a_killed_two_process_cv_run_resumes_and_loses_at_most_the_epoch_in_progress(sample, tmp_path):
    cmd = command(tmp_path, 2, "cv", tmp_path / "cv", sample, "train.epochs=2", "cv.folds=2",
                  "refit.strategy=folds")  # the folds resume; no refit after them
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    log = RunPaths(tmp_path / "cv" / "fold_0").metrics
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, first)
    import psutil

    for process in [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]:
        process.kill()  # the launcher and both ranks at once (torchrun starts the ranks in sessions of their own)
    first.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    for k in (0, 1):
        assert [r["epoch"] for r in rows(tmp_path / "cv" / f"fold_{k}" / "metrics.csv")] == ["0", "1"]
    assert again.stdout.count("fold 1/2") == 1  # printed by rank 0 only


@pytest.mark.slow
def test_a_two_process_study_trial_completes_and_a_pruned_one_stops_on_both_ranks(sample, tmp_path):
    from optuna.trial import TrialState

    from detector.search import load_study

    def study(name, *extra):
        cmd = command(tmp_path, 2, "study", tmp_path / "unused", sample, "train.epochs=2", "cv.folds=2",
                      "search.n_trials=1", "refit.members=1", *extra)
        cmd = cmd[:cmd.index("--out")] + ["--name", name, "--studies-dir", str(tmp_path / "studies"), "--quiet"]
        return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)

    done = study("kept", "search.pruner=none")
    assert done.returncode == 0, done.stderr[-3000:]
    [trial] = load_study(tmp_path / "studies" / "kept").trials
    assert trial.state == TrialState.COMPLETE and trial.params  # the parameters rank 0 drew, on both ranks
    assert (tmp_path / "studies" / "kept" / "best" / "ensemble.json").exists()
    assert done.stdout.count("trial 0 finished") == 1  # rank 0 alone reports
    # every fold-mean score is below 1: the threshold pruner stops the trial after its first epoch, and rank 1
    # stops with it (a rank left behind would hang the run until the timeout)
    pruned = study("pruned", "search.pruner=threshold", "search.prune_below=1.0", "search.warmup_epochs=0")
    assert pruned.returncode != 0 and "no trial completed (1 pruned)" in pruned.stderr, pruned.stderr[-3000:]
    [trial] = load_study(tmp_path / "studies" / "pruned").trials
    assert trial.state == TrialState.PRUNED and max(trial.intermediate_values) == 0
    rows_written = rows(RunPaths(tmp_path / "studies" / "pruned" / "trial_0000" / "fold_0").metrics)
    assert [r["epoch"] for r in rows_written] == ["0"]


def _rank_of_a_study(rank, port, results):
    import optuna

    from detector import distributed
    from detector.errors import DetectorError
    from detector.search import ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    w = distributed.start(__import__("torch").device("cpu"))

    def objective(trial):
        if w.rank == 1:
            raise DetectorError("this rank cannot read fold_0/images/x.png")  # on rank 1 alone
        return 0.5

    if rank == 0:
        trial = optuna.create_study(direction="maximize").ask()
        try:
            ranks.shared(objective, w)(trial)
            results.put((0, "completed"))
        except DetectorError as e:
            results.put((0, str(e)))
        ranks.stop(w)
    else:
        ranks.follow(objective, w, refit=None)
        results.put((1, "followed to the end"))
    distributed.finish(together=True)  # as the CLI does: a rank that leaves first can abort gloo's exit on the other


@pytest.mark.slow
def test_an_error_on_one_rank_alone_fails_the_trial_on_rank_0(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank_of_a_study, args=(r, port, results)) for r in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    said = dict(results.get(timeout=5) for _ in processes)
    assert said == {0: "rank 1 failed: DetectorError: this rank cannot read fold_0/images/x.png",
                    1: "followed to the end"}
    assert [p.exitcode for p in processes] == [0, 0]  # and both left the group cleanly


def test_collectives_use_the_backends_device():
    import torch

    from detector.distributed import backend_device

    assert backend_device("nccl", 1) == torch.device("cuda", 1)  # NCCL refuses CPU tensors
    assert backend_device("gloo", 1) == torch.device("cpu")


class _Losses(__import__("torch").nn.Module):
    """The smallest model train_one_epoch can step: its loss is a real function of its one weight."""

    def __init__(self):
        import torch

        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        x = __import__("torch").stack(images).mean()
        return {"loss_classifier": ((self.w * x - 1) ** 2 / x).sum(), "loss_box_reg": self.w.abs().sum()}


def _rank_of_an_epoch(rank, port, case, results):
    import torch

    from detector import distributed
    from detector.engine import train_one_epoch
    from detector.hardware import Precision
    from detector.errors import DetectorError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    w = distributed.start(torch.device("cpu"))
    results.put((rank, "device", str(distributed.collective_device(w))))

    def batches():
        for batch in range(4):
            if rank == 1 and batch == 2 and case == "unreadable":
                raise DetectorError("cannot read images/x.png: not an image; re-export it")
            value = float("inf") if rank == 1 and batch == 2 and case == "inf" else 1.0 + batch
            yield [torch.full((3, 4, 4), value)], [{}]

    model = torch.nn.parallel.DistributedDataParallel(_Losses())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        train_one_epoch(model, batches(), optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                        torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
                        precision=Precision("cpu", None), epoch=5,
                        first_failure=lambda failure: distributed.first_failure(w, failure))
        results.put((rank, "said", "finished"))
    except DetectorError as e:
        results.put((rank, "said", f"{type(e).__name__}: {e}"))
    results.put((rank, "weight", float(model.module.w)))
    distributed.finish(together=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unreadable", "inf"])
def test_a_batch_that_fails_on_one_rank_stops_every_rank_at_that_step(tmp_path, case):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank_of_an_epoch, args=(r, port, case, results)) for r in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0]  # neither waited for the other until a timeout
    said = {(r, k): v for r, k, v in (results.get(timeout=5) for _ in range(6))}
    assert said[0, "device"] == said[1, "device"] == "cpu"  # gloo's
    assert said[0, "weight"] == said[1, "weight"] != 1.0  # the two steps before it, taken together
    if case == "unreadable":
        assert said[1, "said"] == "DetectorError: cannot read images/x.png: not an image; re-export it"
        assert said[0, "said"] == ("TrainingError: rank 1 failed at epoch 5, batch 2: DetectorError: cannot read "
                                   "images/x.png: not an image; re-export it; every rank stopped with it (its own "
                                   "message above has the details)")
    else:  # rank 0's own loss was finite: it reports rank 1's
        assert said[0, "said"] == said[1, "said"]
        assert said[0, "said"].startswith("NonFiniteLossError: non-finite loss at epoch 5, batch 2 (loss_classifier=")
