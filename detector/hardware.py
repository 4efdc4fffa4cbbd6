"""The device and precision a run uses (train.device, train.amp), and what the CPU computes natively,
decided where the program runs: whether bf16 autocast trains faster than fp32 here. Machines differ (some CPUs have AVX-512 bf16 and AMX units, others emulate bf16 in software and
run it several times slower than fp32), and models differ too (bf16 speeds up dense convolutions, not the
depthwise ones of EfficientNet-lite, which are memory-bound), so the model to be trained is probed on this
CPU instead of assuming. `train.amp: auto` still trains in fp32 (bf16 training lost accuracy where measured:
train.BF16_COST) and reports what bf16 would save."""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConfigError

@dataclass(frozen=True)
class Precision:
    """Autocast settings: `dtype` None means full fp32; `scaled` means a GradScaler is needed (fp16)."""

    device_type: str
    dtype: torch.dtype | None
    reason: str = field(default="", compare=False)  # why this precision (train.amp: auto's choice)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    return device


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """auto: on CUDA bf16 (fp16 with a GradScaler where bf16 is missing); on CPU fp32. off (or fp32), bf16
    and fp16 are taken as said, on either device."""
    cuda = device.type == "cuda"
    if amp in ("off", "fp32"):
        return Precision(device.type, None, "fp32: train.amp is " + amp)
    if amp == "auto" and cuda:
        bf16 = torch.cuda.is_bf16_supported()
        return Precision("cuda", torch.bfloat16 if bf16 else torch.float16,
                         "bf16 autocast on CUDA" if bf16 else "fp16 autocast with a GradScaler: this GPU lacks bf16")
    if amp == "auto":  # train.report_bf16 probes each model and says what bf16 would save (hardware.py)
        return Precision("cpu", None, "auto: fp32 on a CPU; what bf16 would save is probed as each model is built")
    return Precision(device.type, torch.bfloat16 if amp == "bf16" else torch.float16, f"train.amp is {amp}")



# bf16 counts as faster when the model's probe step takes at most this share of fp32's time. Measured on 2 Zen 4
# cores (bench/precision.py): a dense ResNet-50 backbone 0.6 (bf16 pays), the main job's depthwise
# tf_efficientnet_lite0 0.9-1.0 (memory-bound: bf16 saves nothing and costs precision); emulated bf16 above 1
BF16_FASTER = 0.8


@dataclass(frozen=True)
class CpuPrecision:
    """Whether bf16 autocast runs a model faster than fp32 on this CPU, and why (train.report_bf16 logs it)."""

    bf16: bool
    reason: str
    ratio: float | None = None  # bf16 / fp32 probe time, where measured


_CHOSEN: dict[tuple, CpuPrecision] = {}


def cpu_precision(backbone: nn.Module, image_size: int, key: tuple = ()) -> CpuPrecision:
    """bf16 where oneDNN has native bf16 kernels for this CPU and a probe of `backbone` (a copy: one forward
    and backward of random images at `image_size`, each precision twice) runs it at most BF16_FASTER of
    fp32's time; fp32 otherwise. Probed once per process for each `key` (the model's config)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not native_bf16():
        return CpuPrecision(False, f"fp32: this CPU has no native bf16 ({capability}), where bf16 runs slower")
    if key and key in _CHOSEN:
        return _CHOSEN[key]
    ratio = _ratio(copy.deepcopy(backbone).float().eval(), image_size)
    if ratio > BF16_FASTER:
        chosen = CpuPrecision(False, f"fp32: bf16 took {ratio:.2f}x fp32's time in a probe of this model on this "
                                     f"CPU ({capability}), not faster enough to pay", ratio)
    else:
        chosen = CpuPrecision(True, f"bf16 autocast: this CPU computes bf16 natively ({capability}) and a probe "
                                    f"of this model took {ratio:.2f}x fp32's time", ratio)
    if key:
        _CHOSEN[key] = chosen
    return chosen


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU's own units (AVX-512 bf16 or AMX), not emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _ratio(backbone: nn.Module, image_size: int, rounds: int = 5, least: float = 0.15) -> float:
    """bf16 / fp32 seconds of one forward and backward of `backbone`: the median over rounds of the two
    timed back to back (pairs cancel the drift of other work on the cores), each timing at least `least`
    seconds of repeated steps (a small model's single step is too short to time)."""
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    _step(backbone, x, None), _step(backbone, x, torch.bfloat16)  # oneDNN builds its kernels on first use
    repeats = max(1, math.ceil(least / _step(backbone, x, None)))
    ratios = []
    for _ in range(rounds):
        fp32 = sum(_step(backbone, x, None) for _ in range(repeats))
        ratios.append(sum(_step(backbone, x, torch.bfloat16) for _ in range(repeats)) / fp32)
    return statistics.median(ratios)


def _step(backbone: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = backbone(x)
    features = out.values() if isinstance(out, dict) else out
    sum(f.float().mean() for f in features).backward()
    backbone.zero_grad(set_to_none=True)
    return time.perf_counter() - start
