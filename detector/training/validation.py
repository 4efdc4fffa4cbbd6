"""fit()'s validation of an epoch: predict the validation images (each rank its shard under torchrun), on
tiles when the config predicts on tiles (ensemble.slice), gather the results, and score them at the
split's best threshold, as selection does."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from torch import nn

from .. import distributed
from ..config import Config
from ..data.dataset import model_inputs
from ..data.records import LabelMap
from ..data.results import to_coco_results
from ..engine import predict
from ..metrics import Metrics, evaluate_detections
from ..inference.slicing import predict_tiles


def validate(model: nn.Module, loader: Iterable, gt: dict[str, Any], label_map: LabelMap, cfg: Config,
             process: distributed.Process, progress: bool = False, tile: int = 0,
             ) -> tuple[Metrics, list[dict[str, Any]]]:
    """(metrics, COCO results) of `model` on the images of `gt`; every rank gets the whole split's. With a
    `tile` side the loader gives whole images at full resolution (sampling.val_loader), predicted on tiles."""
    if tile:
        predictions = _predict_sliced(model, loader, cfg, process, tile)
    else:
        predictions = predict(model, loader, device=process.device, precision=process.precision, progress=progress,
                              desc="validate")
    results = to_coco_results(predictions, label_map)
    w = process.world
    if w.active:  # each rank predicted its shard of the validation images
        results = [r for part in distributed.gather(w, results) for r in part]
    results = sorted(results, key=lambda r: r["image_id"])  # the loader's order is by aspect ratio
    metrics = evaluate_detections(gt, results, score_threshold=None, iou_threshold=cfg.eval.iou_threshold,
                                  score=cfg.score)
    return metrics, results


def _predict_sliced(model: nn.Module, loader: Iterable, cfg: Config, process: distributed.Process,
                    tile: int) -> list[dict[str, Any]]:
    def run(chunk: list[np.ndarray]) -> list[dict[str, Any]]:
        return predict(model, [model_inputs(chunk, cfg.data.image_size)], device=process.device,
                       precision=process.precision)

    s, out = cfg.ensemble, []
    for images, targets in loader:
        for image, target in zip(images, targets):
            array = image.mul(255).round_().byte().permute(1, 2, 0).numpy()  # the file's uint8 pixels, exactly
            merged = predict_tiles(run, array, tile, s.slice_overlap, s.slice_whole, s.skip_box_thr)
            out.append({"image_id": int(target["image_id"]), **merged})
    return out
