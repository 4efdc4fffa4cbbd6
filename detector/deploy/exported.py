"""An exported model file (`detector export`: TorchScript or ONNX, with NAME.labels.json beside it) loaded as
an ensemble member, so `detector evaluate` and `detector predict` score and run the deployed file itself."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image

from ..checkpoint import is_torchscript
from ..errors import DetectorError, WeightsError
from ..models.spec import ModelSpec, Specified
from .export import labels_file, read_labels
from .runtimes import Runtime, onnx, torchscript


@dataclass
class ExportedModel(Specified):
    """An exported file run by its deployed runtime, with the spec of the checkpoint it came from."""

    path: Path
    runtime: Runtime
    spec: ModelSpec
    checksum: str  # of the file: what predictions made with it depend on

    def detect(self, arrays: list[np.ndarray]) -> list[dict[str, Any]]:
        """Each (H, W, 3) uint8 RGB array's detections in its pixels, as engine.predict gives them."""
        out = []
        for a in arrays:
            boxes, scores, labels = self.runtime.run(np.ascontiguousarray(a))
            boxes = clip_boxes_to_image(torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4), a.shape[:2])
            out.append({"image_id": 0, "boxes": boxes, "scores": torch.from_numpy(np.asarray(scores, np.float32)),
                        "labels": torch.from_numpy(np.asarray(labels, np.int64))})
        return out


def is_exported(path: str | Path) -> bool:
    """An ONNX file, or a TorchScript archive (which shares its .pt suffix with checkpoints)."""
    p = Path(path)
    return p.suffix == ".onnx" or (p.is_file() and is_torchscript(p))


def load_exported(path: str | Path, device: torch.device) -> ExportedModel:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such model file; export one with `detector export`")
    sidecar = _sidecar(path)
    if sidecar.get("device") == "cuda" and device.type != "cuda":
        raise DetectorError(f"{path}: an fp16 export (export --half) that runs on a CUDA GPU only; use --device "
                            "cuda on a GPU machine, or score the fp32 export")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix != ".onnx" and sidecar.get("sha256") != digest:  # torch.jit.load runs the file's program
        raise WeightsError(f"{path}: not the TorchScript file detector exported beside {labels_file(path).name} "
                           "(its sha256 differs, or the labels file predates the check); a TorchScript file runs "
                           "code when loaded, so only your own exports are: export the checkpoint again")
    runtime = onnx(path, device) if path.suffix == ".onnx" else torchscript(path, device)
    return ExportedModel(path, runtime, ModelSpec.from_dict(sidecar["model"], str(labels_file(path))), digest)


def _sidecar(path: Path) -> dict[str, Any]:
    """NAME.labels.json, with what scoring the file needs: the checkpoint's ModelSpec under "model" (files
    exported before it have its config, label map and image size at the top)."""
    where = labels_file(path)
    if not where.is_file():
        raise WeightsError(f"{path}: {where.name} is not beside it; keep the labels file `detector export` wrote "
                           "next to the model (or export the checkpoint again)")
    sidecar = read_labels(path)
    if isinstance(sidecar.get("model"), dict):
        return sidecar
    missing = [k for k in ("config", "label_map", "image_size") if k not in sidecar]
    if missing:
        raise WeightsError(f"{where}: has no {', '.join(missing)}: it was written by an earlier detector export; "
                           "export the checkpoint again to score or predict with this file")
    return sidecar | {"model": {k: sidecar[k] for k in ("config", "label_map", "image_size", "train_side") if k in sidecar}}
