"""Running a detector the way it is deployed: the eager module, an exported TorchScript file or an ONNX
file in onnxruntime, behind one call (a uint8 RGB (H, W, 3) array in, boxes, scores and labels out), and
the COCO results of such a call over a dataset's images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.coco import CocoIndex
from ..data.images import read_image
from ..data.results import coco_detections
from ..errors import DetectorError, WeightsError

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N, 4) xyxy pixels, scores (N,), labels (N,) 1..K


@dataclass(frozen=True)
class Runtime:
    """One way of running one model: `run(image)` -> Outputs; `name` says which (eager, torchscript, ...)."""

    name: str
    run: Callable[[np.ndarray], Outputs]
    device: str = "cpu"
    run_batch: Callable[[list[np.ndarray]], list[Outputs]] | None = None  # several images in one call


def eager(module: torch.nn.Module, device: torch.device) -> Runtime:
    """A DeployedDetector in PyTorch, on `device`."""
    module = module.to(device).eval()

    def run(image: np.ndarray) -> Outputs:
        with torch.inference_mode():
            out = module(torch.from_numpy(image).to(device))
        return tuple(t.cpu().numpy() for t in out)

    def run_batch(images: list[np.ndarray]) -> list[Outputs]:
        with torch.inference_mode():
            outs = module.many([torch.from_numpy(im).to(device) for im in images])
        return [tuple(t.cpu().numpy() for t in out) for out in outs]

    return Runtime("eager", run, str(device), run_batch)


def torchscript(path: str | Path, device: torch.device) -> Runtime:
    with warnings.catch_warnings():  # TorchScript is the format this file is in; torch's advice to move is not the user's
        warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated", category=FutureWarning)
        scripted = torch.jit.load(str(path), map_location=device)

    def run(image: np.ndarray) -> Outputs:
        with torch.inference_mode():
            out = scripted(torch.from_numpy(image).to(device))
        return tuple(t.cpu().numpy() for t in out)

    return Runtime("torchscript", run, str(device))


def onnx(path: str | Path, device: torch.device, name: str = "onnxruntime") -> Runtime:
    """The file in onnxruntime: its CUDA provider on a CUDA device when this onnxruntime has it."""
    session = onnx_session(path, device)

    def run(image: np.ndarray) -> Outputs:
        boxes, scores, labels = session.run(None, {"image": image})
        return boxes, scores, labels

    return Runtime(name, run, "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu")


def onnx_session(path: str | Path, device: torch.device):
    try:
        import onnxruntime
    except ImportError:
        raise DetectorError("running an ONNX file needs onnxruntime: pip install -e \".[export]\"") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such model file; export one with `detector export`")
    try:
        return onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as e:  # onnxruntime's own errors say which node or type it cannot run
        raise DetectorError(f"{path}: onnxruntime ({', '.join(providers)}) cannot load it: {e}") from None


def results_of(runtime: Runtime, index: CocoIndex, *, bit_depth: int = 16) -> list[dict[str, Any]]:
    """`runtime` over every image of `index`: COCO results in the dataset's own category ids."""
    out: list[dict[str, Any]] = []
    for record in index.images:
        boxes, scores, labels = runtime.run(image_array(record.path, bit_depth))
        out.extend(coco_detections(record.id, boxes, scores.tolist(),
                                   [index.label_map.category_id(int(label)) for label in labels.tolist()]))
    return out


def image_array(path: Path, bit_depth: int = 16) -> np.ndarray:
    """An image as the exported models take it: uint8 RGB (H, W, 3), EXIF orientation applied, contiguous."""
    return np.ascontiguousarray(read_image(path, bit_depth))


def seconds_per_image(runtime: Runtime, images: Sequence[np.ndarray], repeats: int = 3, batch_size: int = 1) -> float:
    """The best of `repeats` timed passes over `images` (decoded already), per image; `batch_size` > 1
    needs a runtime with `run_batch` (eager)."""
    batches = [list(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            runtime.run(batch[0]) if batch_size == 1 else runtime.run_batch(batch)
        _synchronize(runtime.device)
        best = min(best, time.perf_counter() - start)
    return best / max(len(images), 1)


def _synchronize(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
