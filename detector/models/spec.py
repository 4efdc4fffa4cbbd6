"""What identifies a trained model and what rebuilding it needs (`ModelSpec`): its resolved config, label
map, input size, fitted anchors, the scale it trained at, input normalisation and training precision. One
record for the checkpoint (its flat on-disk form), the restored model, the exported file's labels file and
a fit in progress."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from torch import nn

from .. import config as config_mod
from ..config import Config
from ..data.records import LabelMap
from ..errors import WeightsError
from . import faster_rcnn
from .backbones import IMAGENET_MEAN, IMAGENET_STD

# checkpoints written before normalisation was saved were all trained with torchvision's ImageNet constants
LEGACY_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
FIELDS = ("config", "label_map", "anchors", "image_size", "train_side", "normalization", "precision")


@dataclass(frozen=True)
class ModelSpec:
    config: Config  # resolved: data paths absolute
    label_map: LabelMap
    image_size: int  # the longest side images are resized to
    anchors: list | None = None  # per FPN level, (w, h) pairs fitted to the data; None: torchvision's
    train_side: int = 0  # the training images' median longest side (0: unknown): the scale objects were seen at
    normalization: dict[str, list[float]] | None = None  # None: torchvision's ImageNet constants
    precision: str = ""  # what it trained in: fp32, bf16 or fp16 ("": written before it was recorded)

    def to_dict(self) -> dict[str, Any]:
        """The file form: the keys a checkpoint holds beside its weights."""
        return {"config": self.config.to_dict(), "label_map": self.label_map.to_dict(), "anchors": self.anchors,
                "image_size": self.image_size, "train_side": self.train_side,
                "normalization": self.normalization, "precision": self.precision}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> "ModelSpec":
        """From a checkpoint's or labels file's keys (others are ignored); `source` names the file in errors."""
        try:
            return cls(config_mod.from_dict(dict(d.get("config") or {}), source=source),
                       LabelMap.from_dict(d["label_map"]), int(d.get("image_size") or 0), d.get("anchors"),
                       int(d.get("train_side") or 0), d.get("normalization"), str(d.get("precision") or ""))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{source}: its description of the model is damaged ({type(e).__name__}: {e}); use "
                               "the file as detector wrote it, or train or export the model again") from None

    def build(self) -> nn.Module:
        """The architecture it trained as, untrained (nothing downloaded), with its anchors and normalisation."""
        # no fitted anchors recorded: it trained with torchvision's (anchors default, or auto kept them)
        anchors = self.config.model.anchors if self.anchors is not None else "default"
        model, _ = faster_rcnn.build(replace(self.config.model, pretrained=False, anchors=anchors),
                                     num_classes=self.label_map.num_classes, image_size=self.image_size,
                                     anchor_shapes=self.anchors)
        faster_rcnn.set_normalization(model, self.normalization or LEGACY_NORMALIZATION)
        return model


class Specified:
    """What an ensemble member (a restored checkpoint, an exported file) says of itself, read from its spec."""

    spec: ModelSpec

    @property
    def label_map(self) -> LabelMap:
        return self.spec.label_map

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def config(self) -> Config:
        return self.spec.config

    @property
    def train_side(self) -> int:
        return self.spec.train_side
