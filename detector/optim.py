"""Optimizer and learning-rate schedule: parameter groups for fine-tuning, AdamW/SGD, warmup + cosine."""
from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig


class LrSchedule:
    """Learning-rate factor per optimizer step: linear warmup, then cosine decay.

    `onecycle` warms up from 1/25 of the peak and ends at 1/1e4 of it (the shape of torch's OneCycleLR);
    `cosine` warms up from 1/1000 and decays to 0. A plain object so LambdaLR can save its state.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int):
        self.kind, self.total, self.warmup = kind, max(total_steps, 1), min(max(warmup_steps, 0), total_steps)
        self.start, self.end = (1 / 25, 1e-4) if kind == "onecycle" else (1e-3, 0.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1 - self.start) * step / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.end + (1 - self.end) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(t: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD over param_groups(model): train.lr, the backbone multiplier, decay where it belongs."""
    groups = param_groups(model, lr=t.lr, weight_decay=t.weight_decay, backbone_lr_mult=t.backbone_lr_mult,
                          decay_norm_and_bias=t.decay_norm_and_bias)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr)


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0,
                 decay_norm_and_bias: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters in up to four groups: heads before backbone (group 0 carries train.lr), each
    split into weights with decay and normalisation weights / biases (1-D tensors) without it."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("backbone.body."), decay_norm_and_bias or param.ndim > 1)
            groups.setdefault(key, []).append(param)
    order = [(False, True), (False, False), (True, True), (True, False)]
    return [{"params": groups[key], "lr": lr * (backbone_lr_mult if key[0] else 1.0),
             "weight_decay": weight_decay if key[1] else 0.0,
             "name": ("backbone" if key[0] else "heads") + ("" if key[1] else "_no_decay")}
            for key in order if key in groups]
