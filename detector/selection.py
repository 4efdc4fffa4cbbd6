"""Which of the candidate members are published: their fused ensemble only where data.val says it beats the
best member alone beyond the noise.

The members are ranked by their own mAP@[.5:.95] on data.val. The fusion of all of them, then of all but
the weakest, down to the best two, is each tuned (operating_point.tune) and compared with the best member at
its own tuned threshold on the same images (a paired bootstrap, intervals.compare). A fusion passes when it
loses neither mAP nor mAP@0.5, beats the member beyond the noise on one of them, and is not worse beyond the
noise on the score. The passing fusion with the highest mAP is published (fewer members among equals); when
none passes, the best member alone is. Fusion helps when the members agree and each adds what the others
miss; when one member is much stronger, averaging its boxes with weaker ones' loosens them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .config import Config, ScoreConfig
from .inference.ensemble import ImagePrediction
from .intervals import PAIRED, Bootstrap, Difference, ImageParts, compare
from .metrics import OperatingPoint
from .operating_point import fused_results, only, tune

@dataclass(frozen=True)
class Option:
    """One fusion tried: the members (candidate indices), its operating point, and it minus the best member."""

    members: list[int]
    point: OperatingPoint
    versus_best: dict[str, Difference]

    @property
    def passes(self) -> bool:
        d = self.versus_best
        if not d:
            return False
        no_loss = d["map"].value >= 0 and d["map_50"].value >= 0
        beats = d["map"].verdict == "better" or d["map_50"].verdict == "better"
        return no_loss and beats and d["score"].verdict != "worse"

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, "passes": self.passes, "operating_point": self.point.to_dict(),
                "versus_best": {k: v.to_dict() for k, v in self.versus_best.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Option":
        return cls([int(i) for i in d["members"]], OperatingPoint.from_dict(d["operating_point"]),
                   {k: Difference.from_dict(v) for k, v in d["versus_best"].items()})


@dataclass(frozen=True)
class Selection:
    """What was published and why: the best member, every fusion tried against it, the members chosen."""

    best_member: int
    options: list[Option]
    chosen: list[int]
    reason: str
    bootstrap: str

    def to_dict(self) -> dict[str, Any]:
        return {"best_member": self.best_member, "chosen": self.chosen, "reason": self.reason,
                "bootstrap": self.bootstrap, "options": [o.to_dict() for o in self.options]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Selection":
        return cls(int(d["best_member"]), [Option.from_dict(o) for o in d["options"]],
                   [int(i) for i in d["chosen"]], d["reason"], d.get("bootstrap", ""))


def select(gt: dict[str, Any], images: Sequence[ImagePrediction], image_ids: Sequence[int], cfg: Config,
           alone: Sequence[OperatingPoint], source: str = "") -> tuple[OperatingPoint, Selection]:
    """The published operating point (its `members` say which candidates it fuses) and why, from the
    candidates' stored predictions (`images[i].members`) and each one's own operating point (`alone`)."""
    maps = [a.metrics.map for a in alone]
    order = sorted(range(len(alone)), key=lambda i: (-maps[i], -alone[i].score, i))
    best = order[0]
    single = dataclasses.replace(alone[best], members=[best])
    bootstrap = Bootstrap(cfg.eval.bootstrap)
    if len(alone) == 1:
        return single, Selection(best, [], [best], "one member", bootstrap.describe(len(image_ids)))
    best_parts = _parts(gt, images, image_ids, single, cfg)
    options = []
    for size in range(len(order), 1, -1):
        members = sorted(order[:size])
        point = _fusion(gt, images, image_ids, cfg, members, maps, source)
        options.append(Option(members, point, compare(_parts(gt, images, image_ids, point, cfg), best_parts,
                                                      bootstrap, PAIRED)))
        if not cfg.tune.guard:
            return point, Selection(best, options, members, "tune.guard is off: every member fused",
                                    bootstrap.describe(len(image_ids)))
    chosen = max((o for o in options if o.passes), key=lambda o: (o.point.metrics.map, -len(o.members)),
                 default=None)
    described = bootstrap.describe(len(image_ids))
    if chosen is None:
        return single, Selection(best, options, [best], _alone_reason(best, options), described)
    full = " (all of them)" if len(chosen.members) == len(alone) else ""
    return chosen.point, Selection(best, options, chosen.members, f"the fusion of members {_names(chosen.members)}"
                                   f"{full} beats member {best} alone on data.val beyond the noise", described)


def _fusion(gt: dict[str, Any], images: Sequence[ImagePrediction], image_ids: Sequence[int], cfg: Config,
            members: list[int], maps: Sequence[float], source: str) -> OperatingPoint:
    """The tuned operating point of `members` fused."""
    weights = cfg.ensemble.weights
    if weights is not None and len(weights) == len(maps):
        weights = [weights[i] for i in members]
    settings = dataclasses.replace(cfg.ensemble, weights=weights if weights and len(weights) == len(members) else None)
    point = tune(gt, only(images, members), image_ids, dataclasses.replace(cfg, ensemble=settings), source,
                 [maps[i] for i in members])
    return dataclasses.replace(point, members=members)


def _parts(gt: dict[str, Any], images: Sequence[ImagePrediction], image_ids: Sequence[int], point: OperatingPoint,
           cfg: Config) -> ImageParts:
    results = fused_results(images, image_ids, point.ensemble, point.members)
    return ImageParts.of(gt, results, point.thresholds, cfg.eval.iou_threshold, cfg.score or ScoreConfig())


def _names(members: Sequence[int]) -> str:
    return ", ".join(map(str, members))


def _alone_reason(best: int, options: Sequence[Option]) -> str:
    full = options[0].versus_best
    parts = [f"{k} {d.value:+.4f} [{d.interval.low:+.4f}, {d.interval.high:+.4f}] {d.verdict}"
             for k, d in full.items() if k in ("map", "map_50")]
    return (f"no fusion beats member {best} alone on data.val beyond the noise (all members fused vs member {best}: "
            + "; ".join(parts) + ")")
