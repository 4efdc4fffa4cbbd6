"""Evaluation time of the toolkit vs pycocotools and torchmetrics on the same predictions (500 images, 100
boxes each).

Prints each time, the speed-up (target >= 3x over pycocotools), torchmetrics' MeanAveragePrecision
(faster-coco-eval backend, as a user of that library would call it: tensors per image, then compute) as a
ratio of ours, and the largest metric difference of each (must be < 1e-6). The toolkit's time includes its
F1 matching, which neither of the others computes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from detector.metrics import coco_map, evaluate_detections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.helpers
from tests.helpers import pycocotools_stats  # noqa: E402


def synthetic(n_images: int, per_image: int, seed: int = 0) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 640, "file_name": f"{i}.jpg"})
        n_gt = int(rng.integers(5, 30))
        xy = rng.uniform(0, 560, (n_gt, 2))
        wh = rng.uniform(8, 80, (n_gt, 2))
        cats = rng.integers(1, 4, n_gt)
        for b, c in zip(np.hstack([xy, wh]), cats):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": b.tolist(),
                         "area": float(b[2] * b[3]), "iscrowd": 0})
        pick = rng.integers(0, n_gt, per_image)
        boxes = np.hstack([xy[pick] + rng.normal(0, 4, (per_image, 2)), wh[pick] * rng.uniform(0.8, 1.2, (per_image, 2))])
        pcats = np.where(rng.random(per_image) < 0.85, cats[pick], rng.integers(1, 4, per_image))
        for b, c, s in zip(boxes, pcats, rng.random(per_image)):
            results.append({"image_id": i, "category_id": int(c), "bbox": b.tolist(), "score": float(s)})
    gt = {"images": images, "annotations": anns, "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    return gt, results


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def torchmetrics_map(gt: dict, results: list) -> dict:
    """torchmetrics' COCO mAP of the same boxes: one (preds, target) pair of tensors per image."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    by_image: dict[int, tuple[list, list]] = {im["id"]: ([], []) for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]][0].append(a)
    for r in results:
        by_image[r["image_id"]][1].append(r)

    def tensors(records: list, scored: bool) -> dict:
        boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float32).reshape(-1, 4)
        out = {"boxes": boxes, "labels": torch.tensor([r["category_id"] for r in records], dtype=torch.int64)}
        if scored:
            out["scores"] = torch.tensor([r["score"] for r in records], dtype=torch.float32)
        else:
            out["area"] = torch.tensor([r["area"] for r in records], dtype=torch.float32)
            out["iscrowd"] = torch.tensor([r.get("iscrowd", 0) for r in records], dtype=torch.int64)
        return out

    metric = MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend="faster_coco_eval")
    metric.update([tensors(p, True) for _, p in by_image.values()], [tensors(t, False) for t, _ in by_image.values()])
    return {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gt, results = synthetic(args.images, args.boxes)
    ours_t, ours = best_of(lambda: evaluate_detections(gt, results), args.repeats)
    ref_t, ref = best_of(lambda: pycocotools_stats(gt, results).stats, args.repeats)
    map_t, _ = best_of(lambda: coco_map(gt, results), args.repeats)
    tm_t, tm = best_of(lambda: torchmetrics_map(gt, results), args.repeats)
    diff = max(abs(ours.map - ref[0]), abs(ours.map_50 - ref[1]), abs(ours.map_75 - ref[2]))
    tm_diff = max(abs(ours.value(k) - tm[k]) for k in ("map", "map_50", "map_75"))
    print(f"{args.images} images x {args.boxes} predictions ({len(gt['annotations'])} boxes)")
    print(f"toolkit (mAP + F1):        {ours_t:.3f} s   map {ours.map:.6f}")
    print(f"pycocotools (mAP):         {ref_t:.3f} s   map {ref[0]:.6f}")
    print(f"torchmetrics (mAP, fcoco): {tm_t:.3f} s   map {tm['map']:.6f}")
    print(f"speed-up: {ref_t / ours_t:.2f}x (target >= 3x)   max metric difference: {diff:.2e} (must be < 1e-6)")
    print(f"toolkit mAP alone:         {map_t:.3f} s   (faster-coco-eval called directly, float64 boxes)")
    print(f"torchmetrics / toolkit mAP time: {tm_t / map_t:.2f}x   max metric difference: {tm_diff:.2e} "
          "(its boxes are float32 tensors)")


if __name__ == "__main__":
    main()
