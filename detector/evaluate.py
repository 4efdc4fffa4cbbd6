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

from .checkpoint import TopEntry, read_index
from .config import Config, ScoreConfig
from .data.coco import CocoIndex, load_coco
from .data.summary import crowding_warning
from .ensemble import Ensemble, ImagePrediction
from .errors import DatasetError, DetectorError
from .files import read_json, write_json
from .layout import RunPaths
from .confusion import confusion_matrix
from .error_breakdown import Breakdown, error_breakdown
from .metrics import OperatingPoint, Thresholds, evaluate_detections
from .operating_point import fused_image, fused_results, tune
from .predict import PredictionRun, coco_results, draw_worst, ground_truth_metrics, run_predictions


def evaluate_models(
    models: str | Path,
    annotations: str | Path,
    images_dir: str | Path | None = None,
    *,
    score_threshold: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of `annotations` with `models` and return all metrics: a checkpoint, an exported
    TorchScript or ONNX file (scored as deployed: through torch.jit or onnxruntime), or a best/ folder (a
    study's, or its export) at its tuned thresholds. `score_threshold` replaces the thresholds (default: the
    folder's, or the checkpoint's eval.score_threshold)."""
    ensemble = Ensemble.load(models, device=device)
    cfg = ensemble.members[0].config
    index = load_coco(annotations, images_dir, label_map=ensemble.label_map, keep_empty=True,
                      drop_placeholder_categories=cfg.data.drop_placeholder_categories)
    run = run_predictions(ensemble, [r.path for r in index.images], gt=index, batch_size=batch_size,
                          progress=progress)
    thresholds = ensemble.thresholds if score_threshold is None else Thresholds(score_threshold, {})
    metrics = _metrics(index, coco_results(run), thresholds, cfg.eval.iou_threshold, cfg.score)
    warnings = [f"{path}: not predicted, scored as missed ({reason})" for path, reason in run.skipped]
    warnings += [w for w in [crowding_warning(index, cfg.model.max_detections)] if w]
    return {**metrics, "warnings": warnings} if warnings else metrics


@dataclass
class HeldOutResult:
    ensemble: dict[str, Any]  # metrics at the operating point
    members: list[dict[str, Any]]  # each member alone, at its own tuned threshold
    operating_point: OperatingPoint
    predictions: PredictionRun  # every member's raw predictions (scores from 0), kept for later tuning

    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble, "members": self.members,
                "operating_point": self.operating_point.to_dict()}


def evaluate_on_test(models: Path, test: CocoIndex, cfg: Config) -> dict[str, Any]:
    """The ensemble in `models` (a study's best/), at its operating point, scored once on the test split."""
    ensemble = Ensemble.load(models, device=cfg.train.device)
    run = run_predictions(ensemble, [r.path for r in test.images], gt=test, batch_size=cfg.eval.batch_size)
    [(_, metrics)] = ground_truth_metrics(run, test, ensemble.thresholds, iou_threshold=cfg.eval.iou_threshold,
                                          score=cfg.score)
    boxes = sum(len(r.boxes) for r in test.images if r.id in set(run.image_ids))
    return {"annotations": str(test.path), "images": len(run.image_ids), "boxes": boxes, "metrics": metrics}


def evaluate_held_out(cfg: Config, run: Path, top_models: list[TopEntry], held_out: CocoIndex,
                      *, progress: bool = False) -> HeldOutResult:
    """Predict the held-out split with each of the run's top models once, then choose the ensemble's operating
    point (WBF settings and thresholds, operating_point.tune) from those stored predictions; metrics of the
    ensemble there and of each member alone."""
    if not top_models:
        raise DetectorError(f"{run}: the run kept no model (every epoch scored NaN)")
    ensemble = Ensemble.from_checkpoints([run / m.path for m in top_models], cfg.ensemble, cfg.train.device)
    predictions = run_predictions(ensemble, [r.path for r in held_out.images], gt=held_out,
                                  batch_size=cfg.eval.batch_size, progress=progress, with_members=True)
    gt = held_out.subset(predictions.image_ids).to_coco()
    point = tune(gt, predictions.predictions, predictions.image_ids, cfg,
                 source=f"data.val ({held_out.path}): the published members' predictions")
    single = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, wbf=False))
    members = []
    for i, m in enumerate(top_models):
        alone = tune(gt, predictions.member(i).predictions, predictions.image_ids, single)
        members.append({"path": m.path, "member": m.member, "source": m.source, "fold": m.fold,
                        "epoch": m.epoch, "cv_score": m.score, "metrics": alone.metrics,
                        "score_threshold": alone.thresholds.default})
    fused = fused_results(predictions.predictions, predictions.image_ids, point.ensemble)
    confusion = confusion_matrix(gt, fused, point.thresholds, cfg.eval.iou_threshold).to_dict()
    metrics = {**point.metrics, "annotations": str(held_out.path), "images": len(predictions.image_ids),
               "confusion": confusion, "errors": error_breakdown(gt, fused, point.thresholds).to_dict()}
    return HeldOutResult(metrics, members, point, predictions)


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
    result = read_json(heldout)
    metrics, point = result["ensemble"], OperatingPoint.from_dict(result["operating_point"])
    if not Path(metrics["annotations"]).is_file():
        return []
    gt = load_coco(metrics["annotations"])
    stored = read_json(predictions)
    run = PredictionRun([fused_image(ImagePrediction.from_dict(d), point.ensemble) for d in stored],
                        [d["image_id"] for d in stored])
    return draw_worst(run, gt, Breakdown.from_dict(metrics["errors"]), point.thresholds, out_dir, n)


def tune_run(cfg: Config, run: Path, held_out: CocoIndex) -> HeldOutResult:
    """A cv run's published members (top_models.json) predict data.val once; the ensemble's operating point
    is chosen there and written to operating_point.json, which `detector predict RUN` uses."""
    paths = RunPaths(run)
    result = evaluate_held_out(cfg, run, read_index(paths)[0], held_out)
    write_held_out(paths, result)
    write_json(paths.operating_point, result.operating_point.to_dict())
    return result


def evaluate_results_file(
    results_path: str | Path,
    annotations: str | Path,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    score: ScoreConfig | None = None,
) -> dict[str, Any]:
    """Metrics of a COCO results file ([{image_id, category_id, bbox: [x, y, w, h], score}])."""
    index = load_coco(annotations, check_images=False)
    results = read_results(results_path, index)
    return _metrics(index, results, Thresholds(score_threshold, {}), iou_threshold, score or ScoreConfig())


def read_results(path: str | Path, index: CocoIndex) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: results file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable JSON results file ({e})") from None
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


def _metrics(index: CocoIndex, results, thresholds: Thresholds, iou_threshold: float,
             score: ScoreConfig) -> dict[str, Any]:
    gt = index.to_coco()
    metrics = evaluate_detections(gt, results, score_threshold=thresholds.default,
                                  class_thresholds=thresholds.per_class, iou_threshold=iou_threshold, score=score)
    metrics.update(images=len(index.images), predictions=len(results), score_threshold=thresholds.default,
                   iou_threshold=iou_threshold,
                   confusion=confusion_matrix(gt, results, thresholds, iou_threshold).to_dict(),
                   errors=error_breakdown(gt, results, thresholds).to_dict())
    if thresholds.per_class:
        metrics["class_thresholds"] = thresholds.to_dict()["class_thresholds"]
    return metrics
