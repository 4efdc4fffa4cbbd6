"""ensemble.json: what a published ensemble is (`Manifest`), beside its members in a study's best/ folder
and in an exported deploy folder. The operating point (WBF settings, thresholds, what they scored) is
stored once, in OperatingPoint's form; files written before carried its settings at the top level as well,
and still load."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import config as config_mod
from ..errors import WeightsError
from ..files import read_json, write_json
from ..layout import ENSEMBLE
from ..metrics import Metrics, OperatingPoint, Thresholds


@dataclass(frozen=True)
class PublishedMember:
    """One model of the ensemble: its file beside ensemble.json, where it was trained and how it scored alone
    on data.val at its own best threshold."""

    file: str
    path: str = ""  # the file it was published from (a study's refit or trial folder)
    source: str = ""  # how it was made, in words
    fold: int | None = None  # None: trained on all of data.train
    epoch: int = -1
    heldout: Metrics | None = None
    score_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "path": self.path, "source": self.source, "fold": self.fold, "epoch": self.epoch,
                "heldout": self.heldout.to_dict() if self.heldout else {}, "score_threshold": self.score_threshold}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> "PublishedMember":
        if isinstance(d, str):  # exports before this version listed file names only
            return cls(d)
        return cls(str(d["file"]), str(d.get("path") or ""), str(d.get("source") or ""), d.get("fold"),
                   int(d.get("epoch", -1)), Metrics.from_dict(d["heldout"]) if d.get("heldout") else None,
                   d.get("score_threshold"))


@dataclass(frozen=True)
class Manifest:
    """The members, how they are fused (the operating point chosen on data.val), the label map, and, for a
    study's ensemble, where it came from: the trial, its parameters and fold estimate, the refit and the
    candidates the members were chosen from."""

    members: list[PublishedMember]
    operating_point: OperatingPoint
    label_map: dict[str, Any]
    trial: int | None = None
    value: float | None = None  # the trial's objective value (its fold-mean score)
    latency_ms: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the best trial's run folder
    fold_estimate: Metrics | None = None
    refit: dict[str, Any] = field(default_factory=dict)  # the refit section, and the epochs each member trained
    metrics: Metrics | None = None  # the published ensemble on data.val
    candidates: list[str] = field(default_factory=list)  # the models the members were chosen from
    selection: dict[str, Any] = field(default_factory=dict)  # selection.Selection's form
    iou_threshold: float = 0.5

    @property
    def files(self) -> list[str]:
        return [m.file for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return plain | {"members": [m.to_dict() for m in self.members],
                        "operating_point": self.operating_point.to_dict(),
                        "fold_estimate": self.fold_estimate.to_dict() if self.fold_estimate else None,
                        "metrics": self.metrics.to_dict() if self.metrics else {}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> "Manifest":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        return cls(**values | {
            "members": [PublishedMember.from_dict(m) for m in d["members"]],
            "operating_point": _point(d, source),
            "label_map": d.get("label_map") or {},
            "fold_estimate": Metrics.from_dict(d["fold_estimate"]) if d.get("fold_estimate") else None,
            "metrics": Metrics.from_dict(d["metrics"]) if d.get("metrics") else None})


def _point(d: Mapping[str, Any], source: str) -> OperatingPoint:
    """The operating point; in a file written before it was stored once, its settings at the top level."""
    if d.get("operating_point"):
        return OperatingPoint.from_dict(d["operating_point"])
    thresholds = Thresholds.from_dict(d)
    if thresholds is None:
        raise KeyError("score_threshold")
    return OperatingPoint(thresholds, config_mod.ensemble_from_dict(d.get("ensemble") or {}, source), math.nan,
                          math.nan, Metrics.from_dict({}), 0, f"{source} (written before its tuning was stored)")


def read_manifest(folder: Path) -> Manifest:
    """FOLDER/ensemble.json; one clear error when it is damaged or not a manifest this version reads."""
    path = folder / ENSEMBLE
    raw = read_json(path, fix="publish the study again (detector study ...) or export best/ again")
    try:
        manifest = Manifest.from_dict(raw, str(path))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise WeightsError(f"{path}: not an ensemble manifest this version reads (field {e}); publish the study "
                           "again (run the same detector study command) or export its best/ folder again") from None
    outside = [f for f in manifest.files if Path(f).name != f or f in ("", ".", "..")]
    if outside:
        raise WeightsError(f"{path}: member {outside[0]!r} is not a file name in {folder}; ensemble.json lists its "
                           "members by name beside it: restore the file as detector wrote it")
    return manifest


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    return write_json(folder / ENSEMBLE, manifest.to_dict())
