"""A trial's latency, the second objective of `search.objectives: [score, latency]`: milliseconds per
image of its model fused as best/ would fuse it (as many copies as best/ will hold models, WBF with its
ensemble settings), on the study's device, over the first search.latency_images of data.val, already
decoded (the best of two timed passes after a warm-up). Architecture and input size decide the time, not
which weights, so the first fold's final model, still in memory, stands for the members best/ will hold
(a trial keeps no model file)."""
from __future__ import annotations

import time
import numpy as np
import torch

from ..training.callbacks import CONTROL, Callback, FitState
from ..checkpoint import RestoredModel
from ..config import Config
from ..data.coco import CocoIndex
from ..inference.ensemble import Ensemble
from ..metrics import Metrics
from ..models.spec import ModelSpec
from ..deploy.runtimes import image_array


def timing_images(index: CocoIndex, cfg: Config) -> list[np.ndarray]:
    return [image_array(r.path, cfg.data.bit_depth) for r in index.images[:cfg.search.latency_images]]


class LatencyProbe(Callback):
    """Times the trial when the first fit of this process ends (on rank 0: one process speaks for it)."""

    stage = CONTROL

    def __init__(self, cfg: Config, images: list[np.ndarray], device: torch.device):
        self.cfg, self.images, self.device = cfg, images, device
        self.ms: float | None = None

    def on_fit_end(self, state: FitState) -> None:
        if self.ms is None and state.world.main:
            member = RestoredModel(state.kept, state.spec, Metrics.from_dict({}), "")
            self.ms = ensemble_ms(member, self.cfg, self.images, self.device)

    def measured(self, index: CocoIndex, main: bool = True) -> float:
        """The time measured, or (every fold was finished before a resume) that of the trial's architecture
        untrained, built now; 0 on the other ranks under torchrun (rank 0's value is the trial's)."""
        if not main:
            return 0.0
        if self.ms is None:
            spec = ModelSpec(self.cfg, index.label_map, self.cfg.data.image_size)  # torchvision's anchors: no boxes
            member = RestoredModel(spec.build(), spec, Metrics.from_dict({}), "")
            self.ms = ensemble_ms(member, self.cfg, self.images, self.device)
        return self.ms


def ensemble_ms(member: RestoredModel, cfg: Config, images: list[np.ndarray], device: torch.device) -> float:
    """Milliseconds per image of `member` repeated as often as best/ will hold models, fused."""
    member.model.to(device).eval()
    ensemble = Ensemble([member] * cfg.published_members(), cfg.ensemble, device)
    batch = cfg.eval.batch_size
    ensemble.predict(images[:batch], batch_size=batch)  # warm-up: lazy allocations, cudnn's algorithm choice
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        ensemble.predict(images, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return round(best / max(len(images), 1) * 1000, 2)
