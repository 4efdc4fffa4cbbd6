"""Checkpoints: the Checkpoint record, atomic save, safe load (weights_only=True), RNG state capture, and
model restoration.

On disk a checkpoint is a flat dict of tensors and plain values (Checkpoint.to_dict), so torch.load with
weights_only=True reads it and files written by earlier versions still load.
"""
from __future__ import annotations

import hashlib
import math
import random
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import config as config_mod
from .data.records import LabelMap
from .errors import DetectorError, WeightsError
from .files import atomic_file, read_json, write_json
from .layout import RunPaths
from .metrics import Metrics
from .models import faster_rcnn
from .models.backbones import IMAGENET_MEAN, IMAGENET_STD

FORMAT = 1
# checkpoints written before normalisation was saved were all trained with torchvision's ImageNet constants
LEGACY_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@dataclass
class Checkpoint:
    """A model file (best.pt, top/*.pt, refit/*/model.pt) holds the weights and what rebuilding the model
    needs: its resolved config, label map, anchors (per-level (w, h) or None), image size and input
    normalisation. last.pt adds the state a resume needs (optimizer ... callbacks)."""

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
class RestoredModel:
    model: nn.Module
    label_map: LabelMap
    image_size: int
    config: config_mod.Config
    anchors: list | None
    metrics: Metrics
    checksum: str  # of the checkpoint's tensors: what predictions made with it depend on
    train_side: int = 0  # the training images' median longest side, shrunk to image_size (0: unknown)


def restore_model(path: str | Path, device: str | torch.device = "cpu") -> RestoredModel:
    """Rebuild the model a checkpoint was trained as (no pretrained download) and load its weights."""
    state = load_checkpoint(path)
    cfg = config_mod.from_dict(state.config, source=str(path))
    label_map = LabelMap.from_dict(state.label_map)
    # no fitted anchors recorded: it trained with torchvision's (anchors default, or auto kept them)
    anchors = cfg.model.anchors if state.anchors is not None else "default"
    model, _ = faster_rcnn.build(replace(cfg.model, pretrained=False, anchors=anchors),
                                 num_classes=label_map.num_classes, image_size=state.image_size,
                                 anchor_shapes=state.anchors)
    try:
        model.load_state_dict(state.model)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise WeightsError(f"{path}: its weights are not those of the model its config describes "
                           f"({cfg.model.backbone}: {first}); the file was altered or assembled from two "
                           "checkpoints: use a checkpoint as detector train or cv wrote it") from None
    faster_rcnn.set_normalization(model, state.normalization or LEGACY_NORMALIZATION)
    model.to(device).eval()
    return RestoredModel(model, label_map, int(state.image_size), cfg, state.anchors, Metrics.from_dict(state.metrics),
                         state.checksum or "", int(state.train_side))



@dataclass(frozen=True)
class TopEntry:
    """One published or kept model, as top_models.json lists it: its file (relative to the run), the fold it
    was trained on (None: all of data.train, a refit member), its epoch, its validation score and metrics;
    a refit member also has its name, where its config came from and how many images trained it."""

    path: str
    fold: int | None
    epoch: int
    score: float
    metrics: Metrics | None = None
    member: str | None = None
    source: str | None = None
    train_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"fold": self.fold, "epoch": self.epoch, "score": self.score, "path": self.path,
             "metrics": self.metrics.to_dict() if self.metrics else {}}
        return {**d, **{k: getattr(self, k) for k in ("member", "source", "train_images") if getattr(self, k) is not None}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TopEntry":
        return cls(d["path"], d.get("fold"), int(d.get("epoch", -1)), float(d.get("score", math.nan)),
                   Metrics.from_dict(d["metrics"]) if d.get("metrics") else None, d.get("member"), d.get("source"), d.get("train_images"))


class TopK:
    """The k best checkpoints of each fold by score, listed in `top_models.json`.

    Scores are ranked within a fold only: two folds' scores are measured on different images, so they are
    not compared. A better model replaces the fold's worst; files that fall out are deleted at once.
    Ranking: higher score first, then lower epoch; a NaN score never enters. Offering a (fold, epoch) again
    (a resumed epoch) replaces its entry. The list is in fold order.
    """

    def __init__(self, run_dir: str | Path, k: int, log: Callable[[str], None] = print):
        self.run, self.k = Path(run_dir), k
        self.paths = RunPaths(run_dir)
        self.folder = self.paths.top
        self.index = self.paths.top_models
        self.entries, rebuilt = read_index(self.paths)
        if rebuilt:  # nothing an unreadable index pointed to is deleted: what top/ holds is listed again
            write_json(self.index, [e.to_dict() for e in self.entries])
            log(f"{self.index}: rebuilt from the {len(self.entries)} checkpoint(s) in {self.folder}")
        else:
            self._remove_unlisted()

    def offer(self, fold: int, epoch: int, metrics: Metrics, save: Callable[[Path], Any]) -> bool:
        score = float(metrics.score)
        if not math.isfinite(score):
            return False
        path = self.paths.top_checkpoint(fold, epoch)
        candidate = TopEntry(str(path.relative_to(self.run)), fold, epoch, score, metrics.overall())
        others = [e for e in self.entries if (e.fold, e.epoch) != (fold, epoch)]
        kept = sorted([e for e in others if e.fold == fold] + [candidate], key=_rank)[: self.k]
        if candidate not in kept:
            return False
        save(path)
        self.entries = sorted([e for e in others if e.fold != fold] + kept, key=_order)
        write_json(self.index, [e.to_dict() for e in self.entries])
        self._remove_unlisted()
        return True

    def _remove_unlisted(self) -> None:
        listed = {self.run / e.path for e in self.entries}
        for f in self.folder.glob("*.pt") if self.folder.exists() else []:
            if f not in listed:
                f.unlink()


def _rank(entry: TopEntry) -> tuple[float, int]:
    return (-entry.score, entry.epoch)


def _order(entry: TopEntry) -> tuple[int, float, int]:
    return (entry.fold if entry.fold is not None else -1, *_rank(entry))


def read_index(paths: RunPaths) -> tuple[list[TopEntry], bool]:
    """A run's top_models.json entries, and whether they were rebuilt: an index that is unreadable, or
    missing while checkpoints it would list exist (a kill between a save and the index write), is rebuilt
    from the checkpoints themselves (top/*.pt and refit/*/model.pt each hold their epoch and metrics)."""
    if paths.top_models.exists():
        try:
            return [TopEntry.from_dict(d) for d in read_json(paths.top_models)], False
        except DetectorError:
            pass
    top = [_entry(paths, path, fold=fold) for fold, _, path in paths.top_checkpoints()]
    refit = [_entry(paths, p, member=p.parent.name) for p in sorted(paths.refit.glob(f"*/{paths.model.name}"))]
    entries = sorted((e for e in top if e is not None), key=_order) + [e for e in refit if e is not None]
    return entries, paths.top_models.exists() or bool(entries)


def _entry(paths: RunPaths, path: Path, fold: int | None = None, member: str | None = None) -> TopEntry | None:
    try:
        state = load_checkpoint(path)
    except WeightsError:
        return None  # a file that cannot be read is not listed, and not deleted either
    metrics = Metrics.from_dict(state.metrics).overall()
    relative = str(path.relative_to(paths.root))
    return TopEntry(relative, fold, int(state.epoch), metrics.score, metrics, member,
                    None if member is None else f"rebuilt from {relative}")
