"""The public Python API: one function per job, each what the CLI command of the same name runs, so a
notebook and `detector ...` write the same run folders. Configs come as a YAML path, a mapping or a `Config`,
with `overrides` in the dotted keys of `--set` ({"train.epochs": 2}). User errors raise `DetectorError`; nothing
prints unless asked (`log=print`, `progress=True`).

    import detector
    run = detector.train("configs/quickstart.yaml", out="runs/q", overrides={"train.epochs": 2})
    scored = detector.evaluate(run.best_path, "examples/rbc/test/_annotations.coco.json")
    found = detector.predict(run.best_path, ["examples/rbc/test"], out="preds/q")
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import Config, ConfigSource, Overrides, resolve
from .errors import ConfigError, DetectorError
from .metrics import Metrics

if TYPE_CHECKING:
    from .analysis.scorecard import Scorecard
    from .intervals import Difference

__all__ = ["Config", "DetectorError", "Metrics", "benchmark", "check_data", "convert", "cv", "evaluate", "export",
           "init", "load", "predict", "study", "train"]  # what `import detector` exposes (detector/__init__.py)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_run_dir(config: ConfigSource) -> Path:
    """runs/CONFIG-TIMESTAMP: where a train or cv run goes when no `out` is given."""
    stem = Path(config).stem if isinstance(config, (str, Path)) else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: ConfigSource, out: str | Path | None = None, *, overrides: Overrides = (), force: bool = False,
          progress: bool = False, log: Log = _quiet, mlflow: str | None = None):
    """Train one model on the config's train split, validated on its val split every epoch; an existing `out`
    of the same config resumes. `mlflow`: a tracking URI (default MLFLOW_TRACKING_URI) to log the run to.
    Returns the FitResult (best epoch, its metrics, best_path)."""
    from .data.splits import load_splits
    from .distributed import world
    from .tracking import tracked_run, tracking_uri
    from .training.callbacks import BestCheckpoint
    from .training.fit import fit

    cfg = resolve(config, overrides)
    out = out or default_run_dir(config)
    with tracked_run(tracking_uri(mlflow), out, nested=False, main=world().main, log=log) as tracked:
        train_index, val_index = load_splits(cfg, log)
        return fit(cfg, train_index, val_index, out, force=force, progress=progress, log=log,
                   callbacks=[BestCheckpoint(), *tracked] if tracked else None)


def cv(config: ConfigSource, out: str | Path | None = None, *, overrides: Overrides = (), force: bool = False,
       progress: bool = False, log: Log = _quiet, mlflow: str | None = None):
    """k-fold cross-validation, then the published members (refit, or the folds' top models) with their
    operating point chosen on data.val. `mlflow`: a tracking URI (default MLFLOW_TRACKING_URI): one run, its
    folds and members nested. Returns the CVResult (folds, mean, std, top models, `published`)."""
    from .distributed import world
    from .tracking import tracked_run, tracking_uri
    from .training.cv import run_cv

    cfg, out = resolve(config, overrides), out or default_run_dir(config)
    with tracked_run(tracking_uri(mlflow), out, nested=True, main=world().main, log=log) as tracked:
        return run_cv(cfg, out, force=force, progress=progress, log=log, callbacks=tracked)


def study(config: ConfigSource, name: str, *, studies_dir: str | Path = "studies", storage: str | None = None,
          n_trials: int | None = None, timeout: float | None = None, overrides: Overrides = (),
          progress: bool = False, log: Log = _quiet, mlflow: str | None = None, artifacts: str | None = None):
    """Run (resume, or join) the Optuna study STUDIES_DIR/NAME and publish its best config's ensemble in
    best/. `mlflow`: a tracking URI (default MLFLOW_TRACKING_URI): the study is an experiment, each trial a run
    with its folds nested. `artifacts`: s3://BUCKET/PREFIX or a folder (default DETECTOR_ARTIFACTS) that keeps
    each trial's state and the published best/, for workers that share no disk (see fetch). Returns the
    StudyResult; raises DetectorError when nothing could be published."""
    from .distributed import world
    from .search import run_study
    from .tracking import tracking_uri

    cfg = resolve(config, _with_search(overrides, n_trials, timeout))
    directory = Path(studies_dir) / name
    result = run_study(cfg, directory, storage=storage, progress=progress, log=log, mlflow=tracking_uri(mlflow),
                       artifacts=artifacts_url(artifacts))
    if not world().main:  # under torchrun rank 0 speaks for the study
        return result
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items())
    if result.best_trial is None and result.states.get("COMPLETE"):
        raise DetectorError(f"study {result.name}: no trial is within search.max_latency_ms "
                            f"{cfg.search.max_latency_ms:g}, so nothing is published; see the front: detector "
                            f"report {directory}")
    if result.best_trial is None:
        raise DetectorError(f"study {result.name}: no trial completed ({states}), so nothing is published; "
                            f"why each trial ended: detector report {directory}")
    return result


def fetch(study: str | Path, out: str | Path, *, storage: str | None = None, artifacts: str | None = None,
          force: bool = False, log: Log = _quiet) -> Path:
    """Bring the best/ folder a study published (with --artifacts) into `out`, from any machine: `study` is
    its name (or folder), `storage` its Optuna storage (default DETECTOR_STORAGE), `artifacts` the store it
    was uploaded to (default: the one the study records). Returns `out`, ready for predict, evaluate, export."""
    from .search.publishing import fetch as fetch_best

    return fetch_best(study, out, storage=storage or os.environ.get("DETECTOR_STORAGE") or None,
                      artifacts=artifacts_url(artifacts), force=force, log=log)


def artifacts_url(given: str | None) -> str | None:
    """--artifacts, else DETECTOR_ARTIFACTS, else none."""
    from .search.artifacts import ENV

    return given or os.environ.get(ENV) or None


def _with_search(overrides: Overrides, n_trials: int | None, timeout: float | None) -> Overrides:
    extra = {k: v for k, v in (("search.n_trials", n_trials), ("search.timeout", timeout)) if v is not None}
    if not extra:
        return overrides
    if isinstance(overrides, str):
        overrides = [overrides]
    return {**overrides, **extra} if isinstance(overrides, dict) else [*overrides, *(f"{k}={v}" for k, v in extra.items())]


def load(models: str | Path | Sequence[str | Path], *, device: str = "auto", **overrides: Any):
    """The models for prediction: a study's best/ folder, a run's top_models.json (or folder), checkpoints or
    exported files; `overrides` replace fusion settings (iou_thr, skip_box_thr, conf_type, weights, slice,
    slice_overlap, slice_whole) and score_threshold. Returns an Ensemble (`.predict(images)`)."""
    from .inference.ensemble import Ensemble

    if not isinstance(models, (str, Path)):
        models = list(models)
        models = models[0] if len(models) == 1 else models
    return Ensemble.load(models, device=device, overrides={k: v for k, v in overrides.items() if v is not None})


@dataclass
class Prediction:
    """What a predict job did: the predictions (all scores), the files written to `out`, and, with `gt`,
    the ground-truth report (the ensemble beside its members, its confusion matrix and errors)."""

    run: Any  # predict.PredictionRun
    ensemble: Any  # ensemble.Ensemble
    out: Path
    written: list[Path]
    resumed: int = 0
    drawings: int = 0
    report: Any = None  # predict.GroundTruthReport with gt


def predict(models: Any, images: Sequence[str | Path] = (), *, out: str | Path, gt: str | Path | None = None,
            images_dir: str | Path | None = None, tta: bool = False, draw: bool = False, batch_size: int = 8,
            device: str = "auto", force: bool = False, progress: bool = False, log: Log = _quiet,
            **overrides: Any) -> Prediction:
    """Predict image files, folders or globs (with `gt`, none = all of its images) with `models` (as `load`
    takes them, or an Ensemble), writing predictions.csv, predictions.json and images.json (and drawings) to
    `out` as images finish; an interrupted job of the same models and images resumes there."""
    from .inference.ensemble import Ensemble
    from .inference.predict import OutputWriter, collect_images, ground_truth_report, load_ground_truth, run_predictions

    if isinstance(models, Ensemble) and overrides:
        raise ConfigError(f"fusion settings ({', '.join(overrides)}) are given to detector.load, which builds the "
                          "Ensemble; this one is already built")
    ensemble = models if isinstance(models, Ensemble) else load(models, device=device, **overrides)
    truth = load_ground_truth(gt, ensemble, images_dir) if gt else None
    if not images and truth is None:
        raise DetectorError("no images given: predict MODELS IMAGES... (files, folders or globs)")
    paths = collect_images(images) if images else [r.path for r in truth.images]
    job = {"models": ensemble.identity(), "tta": "hflip" if tta else None, "gt": str(gt) if gt else None,
           "images": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()}
    writer = OutputWriter(out, ensemble.thresholds, draw=draw, job=job, force=force)
    resumed = len(writer.done)
    if resumed:
        log(f"resuming: {resumed} of {len(paths)} images were predicted by an interrupted run in {out}")
    run = run_predictions(ensemble, paths, gt=truth, batch_size=batch_size, tta=tta, progress=progress,
                          with_members=truth is not None, done=writer.done, on_image=writer.add)
    written = writer.close()
    drawings = sum("drawing" in image for image in writer.images)
    report = ground_truth_report(run, truth, ensemble, Path(out)) if truth is not None else None
    return Prediction(run, ensemble, Path(out), written, resumed, drawings, report)


@dataclass
class Evaluation:
    """Metrics of one model (or results file) on an annotation file's images, with bootstrap intervals, and
    its paired differences to each `against` on the same images."""

    name: str
    images: int
    scorecard: Scorecard  # metrics with intervals, operating point, confusion matrix, error breakdown
    versus: list[tuple[str, dict[str, Difference]]] = field(default_factory=list)  # (other, {metric: Difference})

    @property
    def metrics(self) -> Metrics:
        return self.scorecard.metrics

    def to_dict(self) -> dict[str, Any]:
        """evaluate --json: the scorecard, and the paired differences to each `against`."""
        out = self.scorecard.to_dict()
        if self.versus:
            out["versus"] = [{"against": name, **{k: d.to_dict() for k, d in diffs.items()}}
                             for name, diffs in self.versus]
        return out


def evaluate(models: str | Path | None, annotations: str | Path, *, predictions: str | Path | None = None,
             against: Sequence[str | Path] = (), images_dir: str | Path | None = None,
             score_threshold: float | None = None, bootstrap: int | None = None, batch_size: int = 8,
             device: str = "auto", progress: bool = False) -> Evaluation:
    """Score a checkpoint, an exported file, a best/ folder, or (`predictions`) a COCO results file from any
    detector against `annotations`: COCO mAPs, per class, precision/recall/F1 at the thresholds, confusion
    matrix and error breakdown, 95% bootstrap intervals; and the paired difference to each of `against`."""
    from .analysis.evaluate import paired, predicted, scored_results_file

    if (predictions is None) == (models is None):
        raise DetectorError("give either MODELS ANNOTATIONS or --predictions RESULTS.json ANNOTATIONS")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise ConfigError(f"score_threshold {score_threshold}: must lie in [0, 1]")
    if bootstrap is not None and bootstrap != 0 and not 100 <= bootstrap <= 100_000:
        raise ConfigError(f"bootstrap {bootstrap}: 0 (no intervals) or a number of resamples from 100 to 100000")

    def scored(path, results: bool = False):
        if results or (Path(path).suffix == ".json" and Path(path).is_file()):
            threshold = 0.5 if score_threshold is None else score_threshold
            return scored_results_file(path, annotations, score_threshold=threshold,
                                       **({} if bootstrap is None else {"bootstrap": bootstrap}))
        return predicted(path, annotations, images_dir, score_threshold=score_threshold, batch_size=batch_size,
                         device=device, progress=progress, bootstrap=bootstrap)

    first = scored(predictions or models, results=predictions is not None)
    versus = [(other.name, paired(first, other)) for other in (scored(o) for o in against)]
    return Evaluation(first.name, len(first.index.images), first.scorecard(), versus)


def export(model: str | Path, format: str, out: str | Path, *, quantize: str | None = None,
           calibration: str | Path | None = None, half: bool = False, force: bool = False) -> list[Path]:
    """A checkpoint (or each model of a best/ folder) as TorchScript or ONNX, with its labels file; the
    written model files. `quantize="int8"` (ONNX) also scores the INT8 file against fp32 (read_labels)."""
    from .data.coco import load_coco
    from .deploy.export import export_models

    if calibration and not quantize:
        raise ConfigError("--calibration only applies with --quantize int8")
    index = load_coco(calibration, check_images=False) if calibration else None
    return list(export_models(model, format, out, quantize=quantize, calibration=index, half=half, force=force))


MAX_SIDE = 4096  # a longer side than any detector here trains at; 100000 asked torch for 93 GB


def benchmark(model: str | Path, images: Sequence[str | Path] = (), *, sizes: Sequence[int] = (),
              batch_sizes: Sequence[int] = (1,), runtimes: Sequence[str] = ("eager", "torchscript", "onnx", "int8"),
              limit: int = 16, repeats: int = 3, device: str = "auto"):
    """Milliseconds per image of a checkpoint in eager PyTorch, TorchScript, ONNX Runtime and INT8 at each
    size, each runtime's boxes checked against eager's, on `images` (default: its data.val). A Benchmark."""
    from .deploy.benchmark import benchmark as run_benchmark
    from .checkpoint import restore_model
    from .data.coco import load_coco
    from .hardware import resolve_device
    from .inference.predict import collect_images
    from .deploy.runtimes import image_array

    if any(not 32 <= s <= MAX_SIDE for s in sizes):
        raise ConfigError(f"sizes {list(sizes)}: every size must lie in [32, {MAX_SIDE}]")
    if any(not 1 <= b <= 256 for b in batch_sizes) or limit < 1 or repeats < 1:
        raise ConfigError("batch sizes must lie in [1, 256], limit and repeats be at least 1")
    if images:
        paths = collect_images(images)
    else:
        val = restore_model(model).config.data.val
        if not val.annotations or not Path(val.annotations).is_file():
            raise ConfigError(f"{model}: its data.val ({val.annotations or 'none'}) is not on this machine; "
                              "pass the images to time it on")
        paths = [r.path for r in load_coco(val.annotations, images_dir=val.images_dir, check_images=False).images]
    arrays = [image_array(p) for p in paths[:limit]]
    return run_benchmark(model, arrays, sizes=list(sizes), batch_sizes=list(batch_sizes) or [1],
                         runtimes=[r for r in runtimes if r], device=str(resolve_device(device)), repeats=repeats)


@dataclass
class DataCheck:
    """check-data's findings: a summary per file (its errors among them), the photos one file shares with
    an earlier one, and whether the files can be used together."""

    summaries: list[dict[str, Any]]
    shared: list[dict[str, Any]]
    usable: bool


def check_data(*annotations: str | Path, images_dir: str | Path | None = None, strict: bool = False,
               copy_similarity: float | None = None) -> DataCheck:
    """Validate COCO files, summarise each, and find copies of one photo within and across them."""
    from .config import DataConfig
    from .data.coco import load_coco
    from .data.overlap import shared_across
    from .data.summary import copies_within, summarize

    similarity = DataConfig().copy_similarity if copy_similarity is None else copy_similarity
    if not 0 < similarity <= 1:
        raise ConfigError(f"--copy-similarity must lie in (0, 1]; got {similarity}")
    if not annotations:
        raise ConfigError("check_data needs at least one COCO file")
    indices, summaries = [], []
    for path in annotations:
        try:
            index = load_coco(path, images_dir, strict_boxes=strict, raise_on_error=False)
        except DetectorError as e:  # the file itself is unreadable: nothing to summarise
            summaries.append({"annotations": str(path), "usable": False, "errors": [str(e)]})
            continue
        indices.append(index)
        summaries.append(summarize(index) | {"copies": copies_within(index, similarity)})
    shared = [{"file": str(a.path), "image": str(s.image), "copy_of_file": str(b.path), "copy_of": str(s.copy_of),
               "how": s.how, "similarity": s.similarity} for a, b, s in shared_across(indices, similarity)]
    certain = DataConfig().test_copy_error  # what would stop a study, were the later file its data.test
    usable = all(s["usable"] for s in summaries) and not any(s["similarity"] >= certain for s in shared)
    return DataCheck(summaries, shared, usable)


@dataclass
class Started:
    """init's plan (each choice with its reason) and the files it wrote."""

    starter: Any  # starter.Starter
    written: list[Path]


def init(annotations: str | Path, out: str | Path, *, val: str | Path | None = None, test: str | Path | None = None,
         images_dir: str | Path | None = None, force: bool = False) -> Started:
    """Write a starting config for a COCO training file (val/test found beside it, or carved off), each
    choice with its reason."""
    from .starter import plan_config, write

    out = Path(out)
    paths = [Path(p) if p else None for p in (val, test, images_dir)]
    starter = plan_config(Path(annotations), out, *paths)
    written = write(starter, out, Path(annotations), force=force, inputs=[p for p in paths[:2] if p])
    return Started(starter, written)


@dataclass
class Converted:
    """What convert wrote: the COCO index (or YOLO label files), the folder file names are relative to, and
    the readers' warnings."""

    written: list[Path]
    index: Any  # data.coco.CocoIndex
    root: Path | None
    classes: list[str]
    warnings: list[str]


def convert(source: str | Path, out: str | Path, *, fmt: str, to: str = "coco", images_dir: str | Path | None = None,
            names: str | Path | None = None, force: bool = False) -> Converted:
    """Pascal VOC, YOLO, LabelMe, CVAT or Open Images annotations into one COCO file `out` (written only once it
    loads back), or (fmt="coco", to="yolo") a COCO file into a YOLO labels folder."""
    from .data.coco import load_coco
    from .data.convert import convert_to_coco, read_dataset, write_yolo
    from .outputs import claim_file, claim_folder

    source, out = Path(source), Path(out)
    if (fmt == "coco") != (to == "yolo"):
        raise ConfigError("convert reads VOC, YOLO, LabelMe, CVAT or Open Images into COCO (--to coco), or COCO "
                          f"into YOLO (--from coco --to yolo); got --from {fmt} --to {to}")
    if to == "yolo":
        claim_folder(out, force=force, what="--to yolo writes a labels folder")
        index = load_coco(source, images_dir)
        return Converted(write_yolo(index.to_coco(), out), index, None, list(index.label_map.names), [])
    claim_file(out, [source, *([Path(names)] if names else [])], force=force)
    read = read_dataset(fmt, source, Path(images_dir) if images_dir else None, Path(names) if names else None)
    index, root = convert_to_coco(read, out)
    return Converted([out], index, root, list(read.classes), [*read.warnings, *index.file_warnings()])
