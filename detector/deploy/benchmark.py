"""`detector benchmark MODEL`: what a model costs per image in each way it can be deployed.

For each image size (the longest side the model resizes to) the eager PyTorch module, its TorchScript and
ONNX exports and the INT8 ONNX model are timed on the same decoded images (best of `repeats` passes, one
warm-up first), and each one's boxes are compared with eager's on those images: the share of eager's
confident boxes (score >= CONFIDENT) that it finds again (same label, IoU >= 0.9), and the largest corner
difference of those it finds. Batch sizes above 1 apply to eager only: the exported graphs take one image.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from ..checkpoint import restore_model
from ..errors import ConfigError, DetectorError
from .export import deployed, serialize
from .quantize import quantize_int8
from .runtimes import Outputs, Runtime, eager, onnx, seconds_per_image, torchscript

RUNTIMES = ("eager", "torchscript", "onnx", "int8")
CONFIDENT = 0.1  # boxes below it may swap places near the max_detections cutoff on a 1e-6 score difference


@dataclass(frozen=True)
class Row:
    runtime: str
    device: str
    image_size: int
    batch_size: int
    ms_per_image: float
    images_per_second: float
    found: float  # share of eager's confident boxes this runtime finds again (1.0 for eager itself)
    max_box_px: float  # the largest corner difference of those found, in image pixels


@dataclass(frozen=True)
class Benchmark:
    model: str
    images: int
    threads: int
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runtimes this machine cannot run, and why

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        head = (f"{self.model}: {self.images} images, {self.threads} CPU threads; found = eager's boxes scoring "
                f">= {CONFIDENT} found again (same label, IoU >= 0.9), max px = their largest corner difference")
        lines = [head, f"{'runtime':<12} {'device':<7} {'size':>5} {'batch':>5} {'ms/image':>9} {'images/s':>9} "
                       f"{'found':>6} {'max px':>7}"]
        for r in self.rows:
            lines.append(f"{r.runtime:<12} {r.device:<7} {r.image_size:>5} {r.batch_size:>5} {r.ms_per_image:>9.1f} "
                         f"{r.images_per_second:>9.2f} {r.found:>6.3f} {r.max_box_px:>7.3f}")
        lines += [f"not measured: {why}" for why in self.skipped]
        return "\n".join(lines)


def benchmark(checkpoint: str | Path, images: Sequence[np.ndarray], *, sizes: Sequence[int] = (),
              batch_sizes: Sequence[int] = (1,), runtimes: Sequence[str] = RUNTIMES, device: str = "cpu",
              repeats: int = 3) -> Benchmark:
    """Time `checkpoint` in each of `runtimes` at each of `sizes` (default: its own image size)."""
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ConfigError(f"--runtimes {','.join(unknown)}: choose from {', '.join(RUNTIMES)}")
    if not images:
        raise ConfigError("benchmark: no images to time the model on; pass image files or folders")
    restored = restore_model(checkpoint, "cpu")
    target = torch.device(device)
    report = Benchmark(str(checkpoint), len(images), torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes or [restored.image_size]:
            module = deployed(restored, size)
            reference = eager(module, target)
            expected = [reference.run(im) for im in images]
            for runtime in _runtimes(module, runtimes, target, Path(tmp) / str(size), images, report.skipped):
                for batch in batch_sizes if runtime.run_batch is not None else [1]:
                    report.rows.append(_row(runtime, size, batch, images, expected, repeats))
    return report


def _runtimes(module: torch.nn.Module, names: Sequence[str], device: torch.device, folder: Path,
              images: Sequence[np.ndarray], skipped: list[str]) -> list[Runtime]:
    """Each runtime asked for, its file exported from `module` into `folder` (INT8 calibrated on `images`);
    one this machine cannot build (onnx or onnxruntime not installed) is added to `skipped` with the reason,
    and the others are still measured."""
    folder.mkdir(parents=True)
    out = []
    for name in names:
        try:
            out.append(_runtime(module, name, device, folder, images))
        except DetectorError as e:
            skipped.append(f"{name} at {module.image_size} px: {e}")
    return out


def _runtime(module: torch.nn.Module, name: str, device: torch.device, folder: Path,
             images: Sequence[np.ndarray]) -> Runtime:
    if name == "eager":
        return eager(module, device)
    if name == "torchscript":
        (folder / "model.pt").write_bytes(serialize(copy.deepcopy(module).cpu(), "torchscript"))
        return torchscript(folder / "model.pt", device)
    fp32 = folder / "model.onnx"
    if not fp32.exists():
        fp32.write_bytes(serialize(copy.deepcopy(module).cpu(), "onnx"))
    if name == "int8":
        quantize_int8(fp32, folder / "int8.onnx", images)
    return onnx(folder / ("int8.onnx" if name == "int8" else "model.onnx"), device,
                "onnx-int8" if name == "int8" else "onnxruntime")


def _row(runtime: Runtime, size: int, batch: int, images: Sequence[np.ndarray], expected: list[Outputs],
         repeats: int) -> Row:
    got = [runtime.run(im) for im in images]  # the warm-up pass, and what its boxes are compared on
    found, worst = agreement(expected, got)
    seconds = seconds_per_image(runtime, images, repeats, batch)
    return Row(runtime.name, runtime.device, size, batch, round(seconds * 1000, 2), round(1 / seconds, 2),
               round(found, 4), round(worst, 4))


def agreement(expected: list[Outputs], got: list[Outputs], iou: float = 0.9) -> tuple[float, float]:
    """The share of `expected`'s confident boxes that `got` finds again, and their largest corner difference."""
    total = hits = 0
    worst = 0.0
    for (boxes, scores, labels), (other, _, other_labels) in zip(expected, got):
        keep = scores >= CONFIDENT
        ours = torch.as_tensor(boxes[keep], dtype=torch.float32)
        total += len(ours)
        if not len(ours) or not len(other):
            continue
        theirs = torch.as_tensor(np.asarray(other), dtype=torch.float32)
        same = torch.as_tensor(labels[keep])[:, None] == torch.as_tensor(np.asarray(other_labels))[None]
        overlap = box_iou(ours, theirs) * same
        best, at = overlap.max(1)
        matched = best >= iou
        hits += int(matched.sum())
        if matched.any():
            worst = max(worst, float((ours[matched] - theirs[at[matched]]).abs().max()))
    return (hits / total if total else 1.0), worst
