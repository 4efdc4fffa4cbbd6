"""Exported models vs eager PyTorch on CPU: inference time of the same detector on the same images.

Exports one checkpoint to ONNX and TorchScript (detector.export) and times, per image, the eager PyTorch
module, the TorchScript file and the ONNX file in onnxruntime, on the RBC test photos (and the same photos
at half and double size). Prints seconds per image and the ratios to eager, and the largest box difference.

    python bench/export.py runs/rbc/best.pt
    python bench/export.py studies/quickstart/best/model_0.pt --repeats 5
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from detector.checkpoint import restore_model
from detector.data.images import read_image
from detector.deploy.export import deployed, export_models

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import onnxruntime

    photos = [read_image(p) for p in sorted((ROOT / "examples" / "rbc" / "test").glob("*.jpg"))[:5]]
    images = photos + [np.ascontiguousarray(p[::2, ::2]) for p in photos] + [np.repeat(np.repeat(p, 2, 0), 2, 1)
                                                                              for p in photos[:2]]
    eager = deployed(restore_model(args.checkpoint))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [ts] = export_models(args.checkpoint, "torchscript", Path(tmp) / "m.pt")
        [ox] = export_models(args.checkpoint, "onnx", Path(tmp) / "m.onnx")
        scripted = torch.jit.load(str(ts))
        session = onnxruntime.InferenceSession(str(ox), providers=["CPUExecutionProvider"])
        runners = {
            "eager": lambda im: [t.numpy() for t in eager(torch.from_numpy(im))],
            "torchscript": lambda im: [t.numpy() for t in scripted(torch.from_numpy(im))],
            "onnxruntime": lambda im: session.run(None, {"image": im}),
        }
        with torch.no_grad():
            outputs = {name: [run(im) for im in images] for name, run in runners.items()}  # warm-up, and outputs
            seconds = {name: best_of(lambda: [run(im) for im in images], args.repeats) / len(images)
                       for name, run in runners.items()}
    print(f"{len(images)} images ({', '.join(sorted({f'{im.shape[1]}x{im.shape[0]}' for im in images}))}), "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for name, s in seconds.items():
        diff = max(_box_difference(b, a) for a, b in zip(outputs[name], outputs["eager"]))
        print(f"{name:<12} {s * 1000:8.1f} ms/image  x{seconds['eager'] / s:5.2f} vs eager  max |box diff| "
              f"{diff:.2e} px (boxes scoring >= {MIN_SCORE})")


MIN_SCORE = 0.05  # below it, boxes near the max_detections cutoff may swap places on a 1e-6 score difference


def _box_difference(reference, other) -> float:
    """Largest coordinate difference between each reference box scoring >= MIN_SCORE and the box of `other`
    that overlaps it most."""
    from torchvision.ops import box_iou

    keep = reference[1] >= MIN_SCORE
    ours, theirs = torch.from_numpy(reference[0][keep]), torch.from_numpy(np.asarray(other[0]))
    if not len(ours):
        return 0.0
    if not len(theirs):
        return float("inf")
    return float((ours - theirs[box_iou(ours, theirs).argmax(1)]).abs().max())


if __name__ == "__main__":
    main()
