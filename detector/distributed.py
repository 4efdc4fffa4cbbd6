"""Several processes on one run under torchrun (DistributedDataParallel): one GPU each, or gloo on CPU.

`torchrun --nproc_per_node N -m detector.cli train|cv ...` starts N processes that share one run: each
trains on its share of every global batch (train.batch_size is the global batch, split evenly), DDP
averages the gradients, validation is predicted in shards and gathered, and only rank 0 writes files or
logs. Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op for one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .hardware import Precision, resolve_device, resolve_precision
from .errors import ConfigError

T = TypeVar("T")
# how long a rank waits in a collective for the others (DETECTOR_DIST_TIMEOUT overrides): rank 0 alone may
# spend minutes publishing and scoring while the others wait, but a rank that died must not hang the rest
TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from the variables torchrun sets."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device) -> World:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) once; returns this process's World.

    On CUDA the process's own GPU (LOCAL_RANK) becomes its current device first: NCCL's object collectives
    (broadcast_object_list, all_gather_object) use the current device, which is otherwise cuda:0 on every
    rank, and `device_id` binds the group to that GPU."""
    w = world()
    if w.active and not dist.is_initialized():
        seconds = float(os.environ.get("DETECTOR_DIST_TIMEOUT", TIMEOUT_SECONDS))
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=seconds),
                                device_id=torch.device("cuda", w.local_rank) if cuda else None)
    return w


def backend_device(backend: str, local_rank: int) -> torch.device:
    """Where a backend's collectives take their tensors: NCCL only reduces tensors on the rank's own GPU,
    gloo on the CPU."""
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


def collective_device(w: World) -> torch.device:
    """The device of this process group's collective tensors."""
    return backend_device(str(dist.get_backend()), w.local_rank)


@dataclass(frozen=True)
class Process:
    """This process's setup, made once and shared by every fit of a cv run or study: its place in the
    world, its device (its own GPU under torchrun) and its autocast precision."""

    world: World
    device: torch.device
    precision: Precision


def setup(device: str, amp: str, log: Callable[[str], None] | None = None) -> Process:
    """train.device and train.amp resolved, the process group joined (once per process); the choice and
    its reason logged (by rank 0) when `log` is given."""
    resolved = resolve_device(device)
    w = start(resolved)
    resolved = device_of(w, resolved)
    if resolved.type == "cuda":  # images share a longest side and pad to multiples of 32: few input shapes,
        torch.backends.cudnn.benchmark = True  # each convolution tuned once per shape
    process = Process(w, resolved, resolve_precision(amp, resolved))
    if log is not None and w.main:
        log(f"device {resolved}, precision {process.precision.reason}")
    return process


def wrap(model: torch.nn.Module, process: Process, sync_bn: bool) -> torch.nn.Module:
    """What the forward pass calls: the model alone, or under torchrun its DistributedDataParallel wrapper
    (with SyncBatchNorm when train.sync_bn); the optimizer keeps stepping the model's own parameters."""
    if not process.world.active:
        return model
    device = process.device
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm); on CPU leave it false: "
                              "each process then keeps BatchNorm statistics of its own share of the batch")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def finish(together: bool = False) -> None:
    """Leave the process group before the interpreter exits (a gloo group left open can abort the exit).
    `together` (the command succeeded on this rank): wait for every rank first, so no rank tears its
    connections down while rank 0 is still publishing (a peer gone mid-teardown aborted gloo's exit)."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def device_of(w: World, device: torch.device) -> torch.device:
    """Each process's own GPU (LOCAL_RANK) when training on CUDA."""
    return torch.device("cuda", w.local_rank) if w.active and device.type == "cuda" else device


def local_batch(w: World, batch_size: int) -> int:
    if batch_size % w.size:
        raise ConfigError(f"train.batch_size {batch_size} is the global batch and must split evenly over "
                          f"{w.size} processes; use a multiple of {w.size}")
    return batch_size // w.size


def broadcast(w: World, value: T) -> T:
    """Rank 0's value, on every rank."""
    if not w.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(w: World, value: T) -> list[T]:
    """Every rank's value, in rank order, on every rank."""
    if not w.active:
        return [value]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, value)
    return out


def mean(w: World, values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (the same keys on every rank)."""
    if not w.active:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=collective_device(w))
    dist.all_reduce(t)
    return dict(zip(keys, (t / w.size).tolist()))


def first_failure(w: World, failure: Any | None) -> tuple[int, Any] | None:
    """Every rank says whether its step failed (`failure`, picklable, says why); the (rank, failure) of the
    lowest rank that failed, the same on every rank, or None. One all-reduce of one number on the backend's
    device per call; the reasons are gathered only when one rank failed, so all ranks stop together at the
    same step instead of the others waiting in the next collective for a rank that is gone."""
    if not w.active:
        return None if failure is None else (w.rank, failure)
    flag = torch.tensor([0.0 if failure is None else 1.0], device=collective_device(w))
    dist.all_reduce(flag)
    if flag.item() == 0:
        return None
    return next((r, f) for r, f in enumerate(gather(w, failure)) if f is not None)


def main_only(w: World, log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` on rank 0, nothing elsewhere: one process speaks for the run."""
    return log if w.main else _silent


def _silent(message: str) -> None:
    return None


def barrier(w: World) -> None:
    if w.active:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Rank r's share (positions r, r + N, ...) of a global order that depends only on (seed, epoch): the
    same images in the same global batches as one process would see, padded by repeating the start so that
    every rank takes the same number of steps."""

    def __init__(self, order: list[int], w: World):
        self.order, self.w = order, w

    def _padded(self) -> list[int]:
        order = list(self.order)
        pad = -len(order) % self.w.size
        return order + order[:pad]

    def __iter__(self) -> Iterator[int]:
        return iter(self._padded()[self.w.rank::self.w.size])

    def __len__(self) -> int:
        return len(self._padded()) // self.w.size
