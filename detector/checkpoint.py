"""Checkpoints: the Checkpoint record, atomic save, safe load (weights_only=True), RNG state capture, and
model restoration (the kept models' index is top_models.py).

On disk a checkpoint is a flat dict of tensors and plain values (Checkpoint.to_dict), so torch.load with
weights_only=True reads it and files written by earlier versions still load.
"""
from __future__ import annotations

import hashlib
import random
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import WeightsError
from .files import atomic_file
from .metrics import Metrics
from .models.spec import FIELDS, ModelSpec, Specified

FORMAT = 1


@dataclass
class Checkpoint:
    """A model file (best.pt, top/*.pt, refit/*/model.pt) holds the weights and what rebuilding the model
    needs (its ModelSpec, stored flat: config ... precision). last.pt adds the state a resume needs
    (optimizer ... callbacks)."""

    model: dict[str, torch.Tensor]
    label_map: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)
    anchors: list | None = None
    image_size: int = 0
    train_side: int = 0  # the training images' median longest side (0: unknown): the scale objects were seen at
    normalization: dict[str, list[float]] | None = None
    precision: str = ""  # what it trained in: fp32, bf16 or fp16 ("": written before it was recorded)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    rng_ranks: list[dict[str, Any]] = field(default_factory=list)  # each rank's, under torchrun
    train_state: dict[str, Any] | None = None  # train.Progress.to_dict()
    callbacks: dict[str, Any] = field(default_factory=dict)  # each callback's state_dict, by its key
    checksum: str | None = None  # of the tensors: the weights' identity, set by load_checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "checksum"}

    @classmethod
    def of(cls, spec: ModelSpec, model: dict[str, torch.Tensor], **state: Any) -> "Checkpoint":
        return cls(model=model, **spec.to_dict(), **state)

    def spec(self, source: str) -> ModelSpec:
        return ModelSpec.from_dict({k: getattr(self, k) for k in FIELDS}, source)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Checkpoint":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        if state.get("ema") is not None:  # written before callbacks kept their own state
            values["callbacks"] = {**values.get("callbacks", {}), "ema": state["ema"]}
        return cls(**values)


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write a checkpoint atomically (files.atomic_file): a kill leaves the previous file or the new one. A
    sha256 of every tensor goes with it, and load_checkpoint verifies it."""
    state = {"format": FORMAT, **checkpoint.to_dict()}
    with atomic_file(path) as f:
        torch.save({**state, "checksum": tensor_checksum(state)}, f)
    return Path(path)


def tensor_checksum(state: Any) -> str:
    """sha256 over every tensor in a nested dict/list (names and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for name, tensor in _tensors(state, ""):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _tensors(value: Any, name: str):
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found; pass a .pt file written by `detector train`")
    if is_torchscript(path):
        raise WeightsError(f"{path}: a TorchScript export (detector export --format torchscript), not a checkpoint; "
                           "give the .pt file from detector train or cv it was exported from, or load the export "
                           "with torch.jit.load in your own code")
    foreign = _foreign_kind(path)
    if foreign:
        raise WeightsError(f"{path}: {foreign}, not a checkpoint; pass a .pt file written by detector train or cv")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file is a user error; torch's advice to load unsafely is not ours
        reason = str(e).split("\n")[0] if "weights_only" not in str(e) else "it holds objects a safe load refuses"
        raise WeightsError(f"{path}: cannot load checkpoint ({type(e).__name__}: {reason}); pass a .pt file "
                           "written by detector train or cv") from None
    if not isinstance(state, dict) or "model" not in state or "label_map" not in state:
        raise WeightsError(f"{path}: not a detector checkpoint (no model/label_map); pass a file from `detector train`")
    recorded = state.pop("checksum", None)  # checkpoints from before checksums have none
    if recorded is not None and recorded != tensor_checksum(state):
        raise WeightsError(f"{path}: damaged checkpoint: its tensors do not match the checksum saved with them; "
                           "delete it (a run then restarts its folder or fold) or restore a copy")
    return replace(Checkpoint.from_dict(state), checksum=recorded or tensor_checksum(state))


def _foreign_kind(path: Path) -> str | None:
    """What a file that torch.save did not write is (an image, an ONNX or text file), or None: every
    checkpoint since PyTorch 1.6 is a zip archive (older ones a pickle, starting with byte 0x80)."""
    if zipfile.is_zipfile(path):
        return None
    with path.open("rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80":
        return None
    kinds = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image", b"BM": "a BMP image",
             b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"RIFF": "a WebP image"}
    found = next((kind for magic, kind in kinds.items() if head.startswith(magic)), None)
    if found:
        return found
    if path.suffix == ".onnx":
        return "an ONNX file (score it with detector evaluate, or run it with onnxruntime)"
    return "not a complete PyTorch file (truncated, or another kind of file)"


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with code/ and constants.pkl beside the data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [int(v) for v in random.getstate()[1]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), None))


@dataclass
class RestoredModel(Specified):
    """A checkpoint's model, rebuilt and loaded: what an ensemble runs."""

    model: nn.Module
    spec: ModelSpec
    metrics: Metrics
    checksum: str  # of the checkpoint's tensors: what predictions made with it depend on


def restore_model(path: str | Path, device: str | torch.device = "cpu") -> RestoredModel:
    """Rebuild the model a checkpoint was trained as (no pretrained download) and load its weights."""
    state = load_checkpoint(path)
    spec = state.spec(str(path))
    model = spec.build()
    try:
        model.load_state_dict(state.model)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise WeightsError(f"{path}: its weights are not those of the model its config describes "
                           f"({spec.config.model.backbone}: {first}); the file was altered or assembled from two "
                           "checkpoints: use a checkpoint as detector train or cv wrote it") from None
    model.to(device).eval()
    return RestoredModel(model, spec, Metrics.from_dict(state.metrics), state.checksum or "")
