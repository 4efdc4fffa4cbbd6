"""Weighted Boxes Fusion of several detectors, and Ensemble: checkpoints (or their exported files) that
predict and fuse together.

Boxes are xyxy pixels everywhere here; they are normalised to [0, 1] only inside fuse_wbf, the one
place that talks to ensemble-boxes (which needs normalised boxes, equal-length lists and int labels,
calls exit() on a length mismatch and returns float labels).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch

from .. import config as config_mod
from ..checkpoint import RestoredModel, restore_model
from ..top_models import read_index
from ..config import EnsembleConfig
from ..data.dataset import model_inputs
from ..data.images import read_image
from ..engine import predict
from ..hardware import Precision, resolve_device
from ..deploy.exported import ExportedModel, is_exported, load_exported
from ..errors import ConfigError, DatasetError, WeightsError
from ..files import read_json
from ..layout import ENSEMBLE, RunPaths
from ..metrics import OperatingPoint, Thresholds
from .manifest import read_manifest
from .slicing import predict_tiles, tile_size

Member = Union[RestoredModel, ExportedModel]  # a checkpoint, or an exported file run as it is deployed


def check_weights(weights: Sequence[float] | None, models: int) -> None:
    """WBF weights fit the models fused: one each, or None (ensemble-boxes would only warn and drop them)."""
    if weights is not None and len(weights) != models:
        raise ConfigError(f"ensemble.weights has {len(weights)} values for {models} models; give one per model "
                          "or null")


def fuse_wbf(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    width: int,
    height: int,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse one image's detections from several models.

    Per model: boxes (N, 4) xyxy in pixels of a width x height image, scores (N,), labels (N,) ints.
    Returns fused boxes (M, 4) float32 pixels, scores (M,) float32 and labels (M,) int64, by score.
    """
    n = len(boxes)
    if not (n == len(scores) == len(labels)) or n == 0:
        raise ValueError(f"fuse_wbf needs one boxes, scores and labels array per model; got "
                         f"{len(boxes)}, {len(scores)} and {len(labels)}")
    check_weights(weights, n)
    scale = np.array([width, height, width, height], dtype=np.float64)
    norm_boxes, norm_scores, norm_labels = [], [], []
    for i, (b, s, l) in enumerate(zip(boxes, scores, labels)):
        b, s, l = _numpy(b, np.float64).reshape(-1, 4), _numpy(s, np.float64).reshape(-1), _numpy(l, np.int64).reshape(-1)
        if not len(b) == len(s) == len(l):
            raise ValueError(f"model {i}: {len(b)} boxes, {len(s)} scores and {len(l)} labels; they must match")
        b = np.clip(b / scale, 0.0, 1.0)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # zero-area boxes would only raise warnings
        norm_boxes.append(b[keep].tolist())
        norm_scores.append(s[keep].tolist())
        norm_labels.append(l[keep].tolist())
    if not any(norm_boxes):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    from ensemble_boxes import weighted_boxes_fusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused, fused_scores, fused_labels = weighted_boxes_fusion(
            norm_boxes, norm_scores, norm_labels, weights=None if weights is None else list(weights),
            iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type)
    fused = np.asarray(fused, np.float64).reshape(-1, 4) * scale
    return fused.astype(np.float32), np.asarray(fused_scores, np.float32), np.rint(fused_labels).astype(np.int64)


def _numpy(x: Any, dtype) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype) if isinstance(x, torch.Tensor) else np.asarray(x, dtype)


@dataclass
class ImagePrediction:
    """One image's detections: boxes (N, 4) xyxy in the file's pixels, scores, labels 1..K and names."""

    source: str
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    members: list["ImagePrediction"] = field(default_factory=list)  # each model alone (with_members=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and exact: float32 values survive the round trip through from_dict."""
        return {"source": self.source, "width": self.width, "height": self.height, "boxes": self.boxes.tolist(),
                "scores": self.scores.tolist(), "labels": self.labels.tolist(), "names": self.names,
                "category_ids": self.category_ids, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImagePrediction":
        return cls(d["source"], d["width"], d["height"], np.asarray(d["boxes"], np.float32).reshape(-1, 4),
                   np.asarray(d["scores"], np.float32), np.asarray(d["labels"], np.int64), list(d["names"]),
                   list(d["category_ids"]), [cls.from_dict(m) for m in d["members"]])


class Ensemble:
    """Checkpoints or exported files of one label map whose predictions are fused with WBF (one model: no
    fusion). Every member sees each image resized by data.resize.fit_to_model."""

    def __init__(self, members: list[Member], settings: EnsembleConfig | None = None,
                 device: torch.device | None = None, thresholds: Thresholds | None = None):
        """Settings and thresholds default to those the first member was trained with."""
        if not members:
            raise ConfigError("an ensemble needs at least one checkpoint")
        names = [m.label_map.to_dict() for m in members]
        if any(n != names[0] for n in names[1:]):
            raise ConfigError("the checkpoints were trained on different label maps; they cannot be fused")
        if len({m.config.data.bit_depth for m in members}) > 1:
            raise ConfigError("the checkpoints read 16-bit images with different data.bit_depth; they cannot be fused")
        cfg = members[0].config
        self.bit_depth = cfg.data.bit_depth
        self.members = members
        self.settings = settings or cfg.ensemble
        self.device = device or torch.device("cpu")
        self.thresholds = thresholds or Thresholds(cfg.eval.score_threshold, {})
        check_weights(self.settings.weights, len(members))

    def identity(self) -> dict[str, Any]:
        """What its predictions depend on: the members' weights and the fusion settings."""
        return {"members": [m.checksum for m in self.members], "settings": dataclasses.asdict(self.settings)}

    @property
    def label_map(self):
        return self.members[0].label_map

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], settings: EnsembleConfig | None = None,
                         device: str = "auto", thresholds: Thresholds | None = None) -> "Ensemble":
        dev = resolve_device(device)
        return cls([load_member(p, dev) for p in paths], settings, dev, thresholds)

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], device: str = "auto",
             overrides: dict[str, Any] | None = None) -> "Ensemble":
        """A study's `best/` folder, a run's `top_models.json` (or its folder), one checkpoint, or a list.

        The settings and thresholds are those the folder records (a study's tuned operating point), else the
        members' config. `overrides` replaces ensemble settings (iou_thr, skip_box_thr, conf_type, weights)
        and score_threshold (which then applies to every class).
        """
        paths, settings, thresholds = resolve_models(path)
        extra = {k: v for k, v in (overrides or {}).items() if v is not None}
        if "score_threshold" in extra:
            thresholds = Thresholds(float(extra.pop("score_threshold")), {})
        ensemble = cls.from_checkpoints(paths, settings, device, thresholds)
        if not extra:
            return ensemble
        merged = {**dataclasses.asdict(ensemble.settings), **extra}
        settings = config_mod.ensemble_from_dict(merged, "ensemble overrides")
        return cls(ensemble.members, settings, ensemble.device, ensemble.thresholds)

    def predict(self, images: Sequence[str | Path | np.ndarray], *, batch_size: int = 8, tta: bool = False,
                score_threshold: float | None = 0.0, progress: bool = False) -> list[ImagePrediction]:
        """Detections per image (files or HxWx3 uint8 RGB arrays), fused across members (and flips)."""
        return [p for p, _ in self.iter_predict(images, batch_size=batch_size, tta=tta,
                                                score_threshold=score_threshold, progress=progress)
                if p is not None]

    def iter_predict(self, images: Sequence[str | Path | np.ndarray], *, batch_size: int = 8, tta: bool = False,
                     score_threshold: float | None = 0.0, progress: bool = False, with_members: bool = False,
                     ) -> Iterator[tuple[ImagePrediction | None, str | None]]:
        """(prediction, None) per readable image, (None, reason) per unreadable file and (prediction, note) per
        file read only as a truncated one, in input order."""
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc="predict", unit="image", disable=not progress)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            arrays, sources, errors, notes = [], [], {}, {}
            for j, item in enumerate(chunk):
                try:
                    arrays.append(item if isinstance(item, np.ndarray) else
                                  read_image(item, self.bit_depth, on_truncated=lambda n, j=j: notes.update({j: n})))
                    sources.append(j)
                except DatasetError as e:
                    errors[j] = str(e)
            fused, per_member = self._predict_arrays(arrays, tta) if arrays else ([], [])
            for j, item in enumerate(chunk):
                if j in errors:
                    yield None, errors[j]
                    continue
                k = sources.index(j)
                h, w = arrays[k].shape[:2]
                source = str(item) if not isinstance(item, np.ndarray) else f"array {start + j}"
                out = self._image_prediction(fused[k], source, w, h, score_threshold)
                if with_members:
                    out.members = [self._image_prediction(m, source, w, h, score_threshold) for m in per_member[k]]
                yield out, notes.get(j)
            bar.update(len(chunk))
        bar.close()

    def _predict_arrays(self, arrays: list[np.ndarray], tta: bool):
        """(fused prediction per image, [each member's unflipped prediction] per image)."""
        passes = [False, True] if tta else [False]
        per_image: list[list[dict[str, Any]]] = [[] for _ in arrays]
        for member in self.members:
            for flip in passes:
                if self.settings.slice:
                    preds = [self._run_sliced(member, a, flip) for a in arrays]
                else:
                    preds = self._run(member, arrays, flip)
                for i, p in enumerate(preds):
                    per_image[i].append(p)
        weights = self.settings.weights
        if weights is not None and tta:
            weights = [w for w in weights for _ in passes]
        fused = [self._fuse(preds, a.shape[1], a.shape[0], weights) for preds, a in zip(per_image, arrays)]
        return fused, [preds[::len(passes)] for preds in per_image]

    def _run(self, member: Member, arrays: list[np.ndarray], flip: bool) -> list[dict[str, Any]]:
        """One member's detections of `arrays` (of their mirror images, mapped back, with `flip`) in their
        pixels. Checkpoints run in fp32 whatever they trained with, as their exported files do."""
        if isinstance(member, ExportedModel):
            preds = member.detect([a[:, ::-1] for a in arrays] if flip else arrays)
        else:
            preds = predict(member.model, [model_inputs(arrays, member.image_size, flip)], device=self.device,
                            precision=Precision(self.device.type, None))
        if flip:
            for p, a in zip(preds, arrays):
                w = a.shape[1]
                p["boxes"] = torch.stack([w - p["boxes"][:, 2], p["boxes"][:, 1], w - p["boxes"][:, 0],
                                          p["boxes"][:, 3]], dim=1)
        return preds

    def _run_sliced(self, member: Member, array: np.ndarray, flip: bool) -> dict[str, Any]:
        """One member's prediction of one image from its tiles at full resolution (slicing.py)."""
        s = self.settings

        def run(chunk: list[np.ndarray]) -> list[dict[str, Any]]:
            return self._run(member, chunk, flip)

        merged = predict_tiles(run, array, tile_size(s.slice, member.train_side, member.image_size), s.slice_overlap,
                               s.slice_whole, s.skip_box_thr)
        return {"image_id": 0, **merged}

    def _fuse(self, per_model: list[dict[str, Any]], width: int, height: int, weights) -> dict[str, Any]:
        if len(per_model) == 1:
            return per_model[0]
        s = self.settings
        boxes, scores, labels = fuse_wbf([p["boxes"] for p in per_model], [p["scores"] for p in per_model],
                                         [p["labels"] for p in per_model], width=width, height=height,
                                         weights=weights, iou_thr=s.iou_thr, skip_box_thr=s.skip_box_thr,
                                         conf_type=s.conf_type)
        return {"image_id": per_model[0]["image_id"], "boxes": torch.from_numpy(boxes),
                "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}

    def _image_prediction(self, p: dict[str, Any], source: str, width: int, height: int,
                          score_threshold: float | None) -> ImagePrediction:
        keep = p["scores"] >= (score_threshold or 0.0)
        labels = p["labels"][keep].numpy().astype(np.int64)
        lm = self.label_map
        return ImagePrediction(source, width, height, p["boxes"][keep].numpy().astype(np.float32),
                               p["scores"][keep].numpy().astype(np.float32), labels,
                               [lm.name(int(v)) for v in labels], [lm.category_id(int(v)) for v in labels])


def load_member(path: str | Path, device: torch.device) -> Member:
    """A checkpoint, or an exported TorchScript / ONNX file (with its labels file beside it)."""
    return load_exported(path, device) if is_exported(path) else restore_model(path, device)


def is_models_path(item: str | Path) -> bool:
    """Whether a command-line argument names models (rather than images): see resolve_models."""
    p = Path(item)
    return (p.suffix in (".pt", ".pth", ".onnx") or p.name == RunPaths(p).top_models.name
            or (p.is_dir() and ((p / ENSEMBLE).exists() or RunPaths(p).top_models.exists())))


def _read_point(path: Path) -> OperatingPoint:
    try:
        return OperatingPoint.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path}: not an operating point this version reads (field {e}); run the same "
                           "detector cv command again to tune it afresh, or delete the file") from None


def resolve_models(path: str | Path | Sequence[str | Path],
                   ) -> tuple[list[Path], EnsembleConfig | None, Thresholds | None]:
    """Checkpoint paths, and the ensemble settings and thresholds a study's best/ or a run's summary records
    (else None)."""
    if not isinstance(path, (str, Path)):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return resolve_models(paths[0])
        return paths, None, None
    p = Path(path)
    if p.is_dir() and (p / ENSEMBLE).exists():
        manifest = read_manifest(p)
        point = manifest.operating_point
        return [p / f for f in manifest.files], point.ensemble, point.thresholds
    if p.is_dir() and RunPaths(p).top_models.exists():
        p = RunPaths(p).top_models
    if p.name == RunPaths(p).top_models.name and p.is_file():
        top = read_index(RunPaths(p.parent))[0]  # a damaged index is rebuilt from the run's checkpoints
        missing = [m.path for m in top if not (p.parent / m.path).exists()]
        if missing:
            raise WeightsError(f"{p}: listed checkpoints are gone ({', '.join(missing)}); a study keeps only its "
                               "best trial's models (search.keep_models: best): use studies/NAME/best")
        path = RunPaths(p.parent).operating_point
        point = _read_point(path) if path.exists() else None
        chosen = point.members if point is not None and point.members is not None else range(len(top))
        if any(i >= len(top) for i in chosen):
            raise WeightsError(f"{path}: chooses models {list(chosen)} of the {len(top)} that {p} lists; run the "
                               "same detector cv command again to tune it afresh, or delete the file")
        return ([p.parent / top[i].path for i in chosen], point.ensemble if point else None,
                point.thresholds if point else None)
    if p.is_file():
        return [p], None, None
    raise WeightsError(f"{p}: not a checkpoint, a study's best/ folder or a run's top_models.json")

