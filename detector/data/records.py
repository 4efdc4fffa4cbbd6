"""The records a loaded COCO split is made of: its label map and one record per image."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LabelMap:
    """Dataset category ids <-> contiguous model labels 1..K (0 is background)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    def name(self, label: int) -> str:
        return self.names[label - 1]

    def to_dict(self) -> dict[str, list]:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "LabelMap":
        return cls(tuple(int(i) for i in d["category_ids"]), tuple(str(n) for n in d["names"]))


@dataclass
class ImageRecord:
    id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels, clipped to the image, crowd boxes excluded
    category_ids: np.ndarray  # (N,) int64, the dataset's own ids
    annotations: list[dict] = field(default_factory=list)  # raw JSON records, crowd included, for evaluation
    extra: dict[str, Any] = field(default_factory=dict)  # the raw image record
