"""Scoring predictions against ground truth: a checkpoint, an exported model file, an ensemble (a run's top
models, a study's best/ or its export), or a COCO results file from any detector. Models take one path:
`Ensemble` predicts (a checkpoint or an exported file is an ensemble of one), `metrics.evaluate_detections`
scores."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..top_models import TopEntry, read_index
from ..config import Config, ScoreConfig
from ..data.coco import CocoIndex, load_coco
from ..data.summary import crowding_warning
from ..inference.ensemble import Ensemble, ImagePrediction
from ..errors import DatasetError, DetectorError
from ..files import read_json, write_json
from ..layout import RunPaths
from ..metrics import Metrics, OperatingPoint, Thresholds
from ..intervals import PAIRED, RESAMPLES, Bootstrap, Difference, ImageParts, compare
from .scorecard import Scorecard, score
from ..operating_point import fused_image, fused_results, tune
from ..selection import Selection, select
from ..inference.predict import PredictionRun, coco_results, draw_worst, ground_truth_metrics, run_predictions


@dataclass
class Scored:
    """One model's (or one results file's) detections of an annotation file's images, and how they are
    scored: the thresholds, the IoU of a match, the score's weights and the bootstrap's resamples."""

    name: str
    index: CocoIndex
    results: list[dict[str, Any]]
    thresholds: Thresholds
    iou_threshold: float
    score: ScoreConfig
    bootstrap: int
    warnings: list[str] = dataclasses.field(default_factory=list)

    def scorecard(self) -> Scorecard:
        """Every metric, with bootstrap intervals, the confusion matrix and the error breakdown."""
        card, _ = score(self.index.to_coco(), self.results, self.thresholds, iou_threshold=self.iou_threshold,
                        score=self.score, bootstrap=Bootstrap(self.bootstrap))
        return card.with_(warnings=tuple(self.warnings))


def predicted(
    models: str | Path,
    annotations: str | Path,
    images_dir: str | Path | None = None,
    *,
    score_threshold: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
    bootstrap: int | None = None,
) -> Scored:
    """Every image of `annotations` predicted by `models`: a checkpoint, an exported TorchScript or ONNX file
    (run as deployed: through torch.jit or onnxruntime), or a best/ folder (a study's, or its export) at its
    tuned thresholds. `score_threshold` replaces the thresholds (default: the folder's, or the checkpoint's
    eval.score_threshold); `bootstrap` resamples give the intervals (default: eval.bootstrap; 0: none)."""
    ensemble = Ensemble.load(models, device=device)
    cfg = ensemble.members[0].config
    index = load_coco(annotations, images_dir, label_map=ensemble.label_map, keep_empty=True,
                      drop_placeholder_categories=cfg.data.drop_placeholder_categories)
    run = run_predictions(ensemble, [r.path for r in index.images], gt=index, batch_size=batch_size,
                          progress=progress)
    thresholds = ensemble.thresholds if score_threshold is None else Thresholds(score_threshold, {})
    warnings = [f"{path}: not predicted, scored as missed ({reason})" for path, reason in run.skipped]
    warnings += [w for w in [crowding_warning(index, cfg.model.max_detections)] if w]
    return Scored(str(models), index, coco_results(run), thresholds, cfg.eval.iou_threshold, cfg.score,
                  cfg.eval.bootstrap if bootstrap is None else bootstrap, warnings)


def evaluate_models(models: str | Path, annotations: str | Path, images_dir: str | Path | None = None,
                    **options: Any) -> Scorecard:
    """All metrics of `models` on `annotations` (the options and models are predicted's)."""
    return predicted(models, annotations, images_dir, **options).scorecard()


def paired(a: Scored, b: Scored) -> dict[str, Difference]:
    """A minus B on the same images, each at its own thresholds: the paired bootstrap interval of each
    difference (A's resamples) and its word: better, worse or within noise."""
    if a.index.label_map.category_ids != b.index.label_map.category_ids:
        raise DatasetError(f"{a.name} and {b.name} detect other classes ({', '.join(a.index.label_map.names)} vs "
                           f"{', '.join(b.index.label_map.names)}); compare models of one label map")
    ids = [r.id for r in a.index.images]
    if ids != [r.id for r in b.index.images]:
        raise DatasetError(f"{a.name} and {b.name} were scored on other images; compare them on one annotation file")
    gt = a.index.to_coco()
    parts = [ImageParts.of(gt, s.results, s.thresholds, s.iou_threshold, s.score) for s in (a, b)]
    return compare(*parts, Bootstrap(a.bootstrap), PAIRED)


@dataclass(frozen=True)
class MemberScore:
    """One candidate member alone on data.val, at its own tuned threshold: where it came from (its file in
    the run, refit name, fold, epoch and validation score there) and whether it was published."""

    path: str
    member: str | None
    source: str | None
    fold: int | None
    epoch: int
    cv_score: float
    score_threshold: float
    published: bool
    metrics: Metrics

    @property
    def name(self) -> str:
        return f"member {self.member or self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "member": self.member, "source": self.source, "fold": self.fold,
                "epoch": self.epoch, "cv_score": self.cv_score, "score_threshold": self.score_threshold,
                "published": self.published, "metrics": self.metrics.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemberScore":
        return cls(str(d["path"]), d.get("member"), d.get("source"), d.get("fold"), int(d.get("epoch", -1)),
                   float(d.get("cv_score", math.nan)), float(d.get("score_threshold", math.nan)),
                   bool(d.get("published", False)), Metrics.from_dict(d.get("metrics") or {}))


@dataclass
class HeldOutResult:
    """heldout.json: what was published scored on data.val at its operating point, each candidate member
    alone beside it, and why these members (selection)."""

    ensemble: Scorecard  # what is published, at its operating point
    members: list[MemberScore]  # each candidate member alone, at its own tuned threshold
    operating_point: OperatingPoint  # its `members` say which candidates are published
    predictions: PredictionRun | None = None  # every member's raw predictions (scores from 0), for later tuning
    selection: Selection | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.to_dict(), "members": [m.to_dict() for m in self.members],
                "operating_point": self.operating_point.to_dict(),
                **({"selection": self.selection.to_dict()} if self.selection else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeldOutResult":
        return cls(Scorecard.from_dict(d["ensemble"]), [MemberScore.from_dict(m) for m in d["members"]],
                   OperatingPoint.from_dict(d["operating_point"]), None,
                   Selection.from_dict(d["selection"]) if d.get("selection") else None)

    @property
    def published(self) -> list[int]:
        """The candidate members published (by index)."""
        return self.operating_point.members if self.operating_point.members is not None else \
            list(range(len(self.members)))


@dataclass(frozen=True)
class TestScore:
    """A study's best/ scored once on the test split (best/test.json): the published models, each member
    alone beside them, and the paired difference to each (in `ensemble.versus_members`)."""

    annotations: str
    images: int
    boxes: int
    ensemble: Scorecard
    members: list[Scorecard] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"annotations": self.annotations, "images": self.images, "boxes": self.boxes,
                "metrics": self.ensemble.to_dict(),
                **({"members_alone": [m.to_dict() for m in self.members]} if self.members else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TestScore":
        return cls(str(d.get("annotations", "")), int(d.get("images", 0)), int(d.get("boxes", 0)),
                   Scorecard.from_dict(d["metrics"]), [Scorecard.from_dict(m) for m in d.get("members_alone", [])])


def evaluate_on_test(models: Path, test: CocoIndex, cfg: Config) -> TestScore:
    """The ensemble in `models` (a study's best/), at its operating point, scored once on the test split,
    with bootstrap intervals, each member beside it and the paired difference to each."""
    ensemble = Ensemble.load(models, device=cfg.train.device)
    run = run_predictions(ensemble, [r.path for r in test.images], gt=test, batch_size=cfg.eval.batch_size,
                          with_members=len(ensemble.members) > 1)
    rows = ground_truth_metrics(run, test, ensemble.thresholds, len(ensemble.members),
                                iou_threshold=cfg.eval.iou_threshold, score=cfg.score,
                                bootstrap=Bootstrap(cfg.eval.bootstrap))
    boxes = sum(len(r.boxes) for r in test.images if r.id in set(run.image_ids))
    return TestScore(str(test.path), len(run.image_ids), boxes, rows[0][1], [card for _, card in rows[1:]])


def evaluate_held_out(cfg: Config, run: Path, top_models: list[TopEntry], held_out: CocoIndex,
                      *, progress: bool = False) -> HeldOutResult:
    """Predict the held-out split with each of the run's top models once, then choose what to publish
    (selection.select: the members' fusion where it beats the best member, else that member) and its
    operating point (WBF settings and thresholds) from those stored predictions; metrics of the published
    models there and of each member alone, with bootstrap intervals."""
    if not top_models:
        raise DetectorError(f"{run}: the run kept no model (every epoch scored NaN)")
    ensemble = Ensemble.from_checkpoints([run / m.path for m in top_models], cfg.ensemble, cfg.train.device)
    predictions = run_predictions(ensemble, [r.path for r in held_out.images], gt=held_out,
                                  batch_size=cfg.eval.batch_size, progress=progress, with_members=True)
    ids, gt = predictions.image_ids, held_out.subset(predictions.image_ids).to_coco()
    single = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, wbf=False))
    alone = [tune(gt, predictions.member(i).predictions, ids, single) for i in range(len(top_models))]
    source = f"data.val ({held_out.path}): the published members' predictions"
    point, selection = select(gt, predictions.predictions, ids, cfg, alone, source)
    point = dataclasses.replace(point, source=source)
    scoring = {"iou_threshold": cfg.eval.iou_threshold, "score": cfg.score, "bootstrap": Bootstrap(cfg.eval.bootstrap)}
    members = []
    for i, (m, a) in enumerate(zip(top_models, alone)):
        results = fused_results(predictions.predictions, ids, cfg.ensemble, [i])
        card, _ = score(gt, results, a.thresholds, errors=False, metrics=a.metrics, **scoring)
        members.append(MemberScore(m.path, m.member, m.source, m.fold, m.epoch, m.score, a.thresholds.default,
                                   i in (point.members or []), card.metrics))
    fused = fused_results(predictions.predictions, ids, point.ensemble, point.members)
    card, _ = score(gt, fused, point.thresholds, metrics=point.metrics, **scoring)
    return HeldOutResult(card.with_(annotations=str(held_out.path)), members, point, predictions, selection)


def write_held_out(paths: RunPaths, result: HeldOutResult) -> None:
    """heldout.json (operating point, ensemble and members on data.val) and every member's raw predictions
    there (heldout_predictions.json, for tuning again without a model)."""
    run = result.predictions
    write_json(paths.heldout_predictions, [{"image_id": i, **p.to_dict()} for p, i in
                                           zip(run.predictions, run.image_ids)], indent=None)
    write_json(paths.heldout, result.to_dict())


def draw_heldout_worst(heldout: Path, predictions: Path, out_dir: Path, n: int = 8) -> list[Path]:
    """OUT_DIR/worst/: the `n` images of data.val with the most errors of the published ensemble at its
    operating point (heldout.json), drawn from the stored predictions, ground truth beside them; no model
    runs. Nothing when data.val's file has moved since."""
    result = HeldOutResult.from_dict(read_json(heldout))
    card, point = result.ensemble, result.operating_point
    if not Path(card.annotations).is_file() or card.errors is None:
        return []
    gt = load_coco(card.annotations)
    stored = read_json(predictions)
    run = PredictionRun([fused_image(ImagePrediction.from_dict(d), point.ensemble, point.members) for d in stored],
                        [d["image_id"] for d in stored])
    return draw_worst(run, gt, card.errors, point.thresholds, out_dir, n)


def tune_run(cfg: Config, run: Path, held_out: CocoIndex) -> HeldOutResult:
    """A cv run's published members (top_models.json) predict data.val once; the ensemble's operating point
    is chosen there and written to operating_point.json, which `detector predict RUN` uses."""
    paths = RunPaths(run)
    result = evaluate_held_out(cfg, run, read_index(paths)[0], held_out)
    write_held_out(paths, result)
    write_json(paths.operating_point, result.operating_point.to_dict())
    return result


def scored_results_file(
    results_path: str | Path,
    annotations: str | Path,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    score: ScoreConfig | None = None,
    bootstrap: int = RESAMPLES,
) -> Scored:
    """A COCO results file ([{image_id, category_id, bbox: [x, y, w, h], score}]) of any detector, checked
    against `annotations`, with intervals from `bootstrap` resamples of its images (0: none)."""
    index = load_coco(annotations, check_images=False)
    return Scored(str(results_path), index, read_results(results_path, index), Thresholds(score_threshold, {}),
                  iou_threshold, score or ScoreConfig(), bootstrap)


def evaluate_results_file(results_path: str | Path, annotations: str | Path, **options: Any) -> Scorecard:
    """All metrics of a COCO results file (the options are scored_results_file's)."""
    return scored_results_file(results_path, annotations, **options).scorecard()


def read_results(path: str | Path, index: CocoIndex) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: results file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path}: not a readable JSON results file ({type(e).__name__}: {e})") from None
    if not isinstance(results, list):
        raise DatasetError(f"{path}: a COCO results file is a JSON list of detections")
    image_ids = {r.id for r in index.images}
    category_ids = set(index.label_map.category_ids)
    for i, r in enumerate(results):
        where = f"{path}: results[{i}]"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise DatasetError(f"{where}: needs image_id, category_id, bbox and score")
        if r["image_id"] not in image_ids:
            raise DatasetError(f"{where}.image_id: {r['image_id']} is not an image of {index.path}; "
                               "evaluate against the annotation file the predictions were made for")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(math.isfinite(v) for v in box)):
            raise DatasetError(f"{where}.bbox: {box!r} is not 4 finite numbers [x, y, width, height]")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise DatasetError(f"{where}.score: {r['score']!r} is not a finite number")
        if r["category_id"] not in category_ids:
            raise DatasetError(f"{where}.category_id: {r['category_id']!r} is not a category of {index.path} "
                               f"({', '.join(map(str, sorted(category_ids)))}); were the predictions made with "
                               "another label map? Map them to these ids")
    return results

