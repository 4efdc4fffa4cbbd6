"""A study worker on several processes (torchrun): rank 0 claims trials, keeps the heartbeat and records
results; every rank runs each trial's objective together, with the parameters rank 0 drew and its pruning
decisions (optuna-integration's TorchDistributedTrial broadcasts both)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna

from .. import distributed
from ..errors import DetectorError

TRIAL, REFIT, STOP = "trial", "refit", "stop"


def shared(objective: Callable, w: distributed.World) -> Callable[[optuna.Trial], float]:
    """The objective as rank 0 calls it: the other ranks are told to join, then run it with it."""
    if not w.active:
        return objective

    def run(trial: optuna.Trial) -> float:
        from optuna_integration import TorchDistributedTrial

        distributed.broadcast(w, (TRIAL, None))
        try:
            value = objective(TorchDistributedTrial(trial))
        except optuna.TrialPruned:
            _agree(w, None)
            raise
        except Exception as e:  # the trial ends here on rank 0: the others hear it before the next command
            _agree(w, f"{type(e).__name__}: {e}")
            raise
        failed = _agree(w, None)
        if failed:  # the trial's result stands for every rank, so one rank's error fails it
            rank, reason = failed[0]
            raise DetectorError(f"rank {rank} failed: {reason}")
        return value

    return run


def _agree(w: distributed.World, failure: str | None) -> list[tuple[int, str]]:
    """After each trial every rank says how its part ended; the (rank, reason) of the other ranks that failed."""
    return [(r, f) for r, f in enumerate(distributed.gather(w, failure)) if f is not None and r != w.rank]


def stop(w: distributed.World, error: str | None = None) -> None:
    """Rank 0 is done (or failed with `error`): the other ranks return (or raise it)."""
    if w.active:
        distributed.broadcast(w, (STOP, error))


def announce_refit(w: distributed.World, members: list, root: Path) -> None:
    """Rank 0 is about to refit `members` below `root`: the other ranks train them with it."""
    if w.active:
        distributed.broadcast(w, (REFIT, ([m.to_dict() for m in members], str(root))))


def follow(objective: Callable, w: distributed.World, refit: Callable[[list, Path], Any]) -> None:
    """Ranks other than 0: run every trial and refit rank 0 announces, until it stops."""
    from optuna_integration import TorchDistributedTrial

    from ..training.refit import Member

    while True:
        command, payload = distributed.broadcast(w, None)
        if command == STOP:
            if payload is not None:
                raise DetectorError(f"rank 0 stopped: {payload}")
            return
        if command == REFIT:
            members, root = payload
            refit([Member.from_dict(m) for m in members], Path(root))
            continue
        failure = None
        try:
            objective(TorchDistributedTrial(None))
        except optuna.TrialPruned:
            pass  # decided by rank 0, on every rank
        except DetectorError as e:
            failure = f"{type(e).__name__}: {e}"
        _agree(w, failure)  # rank 0 records how the trial ended, with this rank's error if only this one failed
