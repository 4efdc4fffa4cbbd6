"""Command line: argument parsing only; each sub-command is parse -> config.load -> one call."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from .errors import ConfigError, DetectorError, StorageError
from .files import STORAGE_ERRNOS, storage_error


_KEPT = "what finished is kept: the same command resumes train, cv and study from the last finished epoch"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stop) stops a command the way Ctrl-C does."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun rank 0 speaks for the run; errors still show
        from .distributed import world

        if not world().main:
            sys.stdout = open(os.devnull, "w")
    previous = signal.signal(signal.SIGTERM, _terminate)
    done = False
    try:
        code = int(args.func(args) or 0)
        done = True
        return code
    except DetectorError as e:
        resumes = isinstance(e, StorageError) and args.command in ("train", "cv", "study")
        print(f"error: {e}{' (it resumes from the last finished epoch)' if resumes else ''}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:  # anything else is a bug: its traceback shows
            raise
        print(f"error: {storage_error(e.filename or 'a file', e)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"terminated (SIGTERM); {_KEPT}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"interrupted; {_KEPT}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        from .distributed import finish

        finish(together=done)


def _terminate(signum, frame) -> None:
    raise Terminated()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detector", description="Fine-tune Faster R-CNN detectors on COCO data.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model on the config's train/val split")
    _run_arguments(t, "YAML config, e.g. configs/quickstart.yaml").set_defaults(func=_train)
    v = sub.add_parser("cv", help="k-fold cross-validation with per-fold logs and the top-k models")
    _run_arguments(v, "YAML config; folds come from its data.train split (cv section)").set_defaults(func=_cv)
    for add in (_study_parser, _export_parser, _benchmark_parser, _predict_parser, _report_parser, _evaluate_parser, _audit_parser,
                _data_parsers):
        add(sub)
    return p


def _study_parser(sub) -> None:
    st = sub.add_parser("study", help="Optuna search: every trial a k-fold run scored by its WBF ensemble")
    st.add_argument("config", help="YAML config with a search section, e.g. configs/quickstart.yaml")
    st.add_argument("--name", required=True, help="study name; everything goes to STUDIES-DIR/NAME")
    st.add_argument("--n-trials", type=int, help="trials the study runs in all (default: search.n_trials)")
    st.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial")
    st.add_argument("--storage", default=os.environ.get("DETECTOR_STORAGE"),
                    help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db with the password "
                    "in PGPASSWORD, or the whole URL in DETECTOR_STORAGE (default: SQLite in the study folder)")
    st.add_argument("--studies-dir", default="studies", help="parent folder of study folders (default studies)")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set cv.folds=3 (repeatable)")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.add_argument("--mlflow", metavar="URI", default=None,
                    help="log to this MLflow tracking server, e.g. http://127.0.0.1:5000 (default: "
                         "MLFLOW_TRACKING_URI when set)")
    st.add_argument("--artifacts", metavar="URL", default=None,
                    help="where workers on machines that share no disk keep each trial's state and the published "
                    "best/: s3://BUCKET/PREFIX (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY) or a folder (default: DETECTOR_ARTIFACTS when set)")
    st.set_defaults(func=_study)

    f = sub.add_parser("fetch", help="bring the best/ a study published with --artifacts to this machine")
    f.add_argument("study", help="the study's name (or its folder, whose study.json names the storage)")
    f.add_argument("--storage", default=os.environ.get("DETECTOR_STORAGE"),
                   help="the study's Optuna storage URL (default: DETECTOR_STORAGE, or the folder's study.json)")
    f.add_argument("--artifacts", metavar="URL", default=None,
                   help="the artifact store (default: DETECTOR_ARTIFACTS, else the one the study recorded)")
    f.add_argument("--out", required=True, help="the folder to fill, e.g. models/rbc; use it as predict's models")
    f.add_argument("--force", action="store_true", help="replace a previous fetch in --out")
    f.set_defaults(func=_fetch)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="a checkpoint (or each model of a study's best/) as TorchScript or ONNX",
                       description="Loading a TorchScript file runs the program inside it: detector loads only the "
                       "TorchScript files whose labels file (written by this command) records their sha256, and "
                       "you should load only your own.")
    x.add_argument("model", help="a .pt checkpoint, or a study's best/ folder")
    x.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    x.add_argument("--out", required=True, help="the file to write (a folder for a best/ folder)")
    x.add_argument("--quantize", choices=("int8",), default=None,
                   help="ONNX only: ONNX Runtime's static INT8 model, calibrated on the checkpoint's data.val; its "
                        "mAP and speed beside fp32 are printed and kept in NAME.labels.json")
    x.add_argument("--half", action="store_true",
                   help="TorchScript with fp16 weights for CUDA GPUs (built on a machine with one)")
    x.add_argument("--calibration", metavar="COCO_JSON", default=None,
                   help="with --quantize: the images to calibrate and score on (default: the checkpoint's data.val)")
    x.add_argument("--force", action="store_true", help="replace an existing --out (never the model itself)")
    x.set_defaults(func=_export)


def _benchmark_parser(sub) -> None:
    b = sub.add_parser("benchmark", help="milliseconds per image of a model in eager PyTorch, TorchScript, ONNX "
                                         "Runtime and INT8, with each one's boxes checked against eager's")
    b.add_argument("model", help="a .pt checkpoint (a best/ folder's model_0.pt, ...)")
    b.add_argument("images", nargs="*", help="image files, folders or globs (default: the checkpoint's data.val)")
    b.add_argument("--sizes", default="", help="comma-separated longest sides to resize to (default: the "
                                              "checkpoint's image size), e.g. 320,416,640")
    b.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes for eager, e.g. 1,4")
    b.add_argument("--runtimes", default="eager,torchscript,onnx,int8", help="comma-separated, from "
                                                                             "eager,torchscript,onnx,int8")
    b.add_argument("--limit", type=_positive_int, default=16, help="at most this many images (default 16)")
    b.add_argument("--repeats", type=_positive_int, default=3, help="timed passes; the best counts (default 3)")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda (ONNX Runtime uses its CUDA provider "
                                                    "when installed)")
    b.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    b.add_argument("--force", action="store_true", help="replace an existing --json file")
    b.set_defaults(func=_benchmark)


def _predict_parser(sub) -> None:
    from .config import CONF_TYPES

    pr = sub.add_parser("predict", help="ensemble inference with a study's best models, a run's top models or "
                        "checkpoints")
    pr.add_argument("inputs", nargs="+", metavar="MODELS IMAGES",
                    help="models first: a study's best/ folder, a run's top_models.json (or its folder) or .pt "
                    "files; then images: files, folders or globs (with --gt, none = all of its images)")
    pr.add_argument("--out", required=True, help="output folder, e.g. preds/")
    pr.add_argument("--score-threshold", type=_fraction(True), help="boxes kept in the csv and drawings "
                    "(default: the threshold recorded with the models)")
    pr.add_argument("--tta", choices=("hflip",), help="add horizontally flipped passes to the fusion")
    pr.add_argument("--draw", action="store_true", help="write each image with its boxes to OUT/drawn/")
    pr.add_argument("--gt", help="COCO annotations of the images: print metrics of the ensemble and each member")
    pr.add_argument("--images-dir", help="folder the --gt file_name entries are relative to")
    pr.add_argument("--iou-thr", type=_fraction(False), help="WBF IoU threshold in (0, 1] (default: the models' "
                    "ensemble settings)")
    pr.add_argument("--skip-box-thr", type=_fraction(True), help="WBF: ignore member boxes scoring below this")
    pr.add_argument("--conf-type", choices=CONF_TYPES)
    pr.add_argument("--slice", type=_slice_size, help="predict overlapping tiles at full resolution: auto (tiles "
                    "of the side each model trained at) or a tile side in px; for small objects in large images")
    pr.add_argument("--overlap", type=_overlap, help="with --slice: the share of a tile's side its neighbour "
                    "overlaps, in [0, 0.75] (default 0.3; it should exceed the largest object's side)")
    pr.add_argument("--slice-whole", action=argparse.BooleanOptionalAction, default=None,
                    help="with --slice: the whole image, resized, as one more tile (for objects larger than a tile)")
    pr.add_argument("--batch-size", type=_positive_int, default=8)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--force", action="store_true", help="replace the outputs of another job in --out")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=_predict)


def _slice_size(value: str) -> int | str:
    return value if value == "auto" else _int_at_least(value, 32, f"must be auto or a tile side of at least "
                                                                   f"32 px, got {value!r}")


def _overlap(text: str) -> float:
    from .config import MAX_OVERLAP

    value = _fraction(True)(text)
    if value > MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, {MAX_OVERLAP}]: more shares almost all of "
                                         "every tile with the next (0.99 made 124,609 tiles of one 416 px image)")
    return value


def _report_parser(sub) -> None:
    r = sub.add_parser("report", help="tables and plots of a cv run, a study or one trial of a study")
    r.add_argument("run", help="a run directory of `detector cv`, a study folder (studies/NAME) or a trial "
                   "folder (studies/NAME/trial_0007)")
    r.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    r.add_argument("--storage", help="the study's storage URL, when it is not the one the study folder records")
    r.set_defaults(func=_report)


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="COCO metrics, per-class AP, precision, recall and F1")
    e.add_argument("models", nargs="?", help="a checkpoint (.pt from `detector train`), an exported .onnx or "
                   "TorchScript .pt file (scored as deployed), or a best/ folder, a study's or its export (or use "
                   "--predictions)")
    e.add_argument("annotations", help="COCO annotation file with the ground truth")
    e.add_argument("--predictions", help="a COCO results JSON from any detector, instead of a checkpoint")
    e.add_argument("--images-dir", help="folder file_name is relative to (default: the annotation file's)")
    e.add_argument("--score-threshold", type=_fraction(True), help="threshold for precision/recall/F1 "
                   "(default: a best/ folder's tuned thresholds, the model's eval.score_threshold, or 0.5)")
    e.add_argument("--against", action="append", default=[], metavar="OTHER",
                   help="another model (as MODELS) or COCO results .json scored on the same images: the paired "
                   "difference of each metric with its 95%% bootstrap interval, and whether MODELS is better, "
                   "worse or within noise (repeatable)")
    e.add_argument("--bootstrap", type=_bootstrap_resamples, help="resamples of the images for the 95%% "
                   "intervals (default: the model's eval.bootstrap, 2000; 0: none)")
    e.add_argument("--batch-size", type=_positive_int, default=8)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_evaluate)


def _data_parsers(sub) -> None:
    """check-data, init and sample-data: the commands about datasets and configs."""
    c = sub.add_parser("check-data", help="validate COCO files, summarise them, and find copies of one photo "
                       "within and across them")
    c.add_argument("annotations", nargs="+", help="one or more COCO files, e.g. train.json val.json test.json: "
                   "a later file may hold no photo of an earlier one")
    c.add_argument("--images-dir", help="folder the file_name entries are relative to (every file)")
    c.add_argument("--copy-similarity", type=float,
                   help="content similarity from which two images are copies (default: data.copy_similarity's)")
    c.add_argument("--strict", action="store_true", help="boxes outside the image are errors, not warnings")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_check_data)

    i = sub.add_parser("init", help="write a starting config for your COCO data, each choice with its reason")
    i.add_argument("annotations", help="the training split's COCO file (a Roboflow export's valid/ and test/ "
                   "beside it are found)")
    i.add_argument("--out", required=True, help="the config file to write, e.g. my.yaml")
    i.add_argument("--val", help="the validation split's COCO file (default: found beside, else carved off)")
    i.add_argument("--test", help="a test split's COCO file, scored once at the end of a study")
    i.add_argument("--images-dir", help="folder the training file's file_name entries are relative to")
    i.add_argument("--force", action="store_true", help="overwrite an existing config")
    i.set_defaults(func=_init)

    v = sub.add_parser("convert", help="convert Pascal VOC, YOLO, LabelMe, CVAT or Open Images annotations into a "
                       "COCO file (or COCO into YOLO)")
    v.add_argument("source", help="VOC: the folder of .xml files; YOLO: the labels folder; LabelMe: the folder of "
                   ".json files; CVAT: the annotations.xml; Open Images: the box CSV; COCO (--to yolo): the "
                   "COCO file")
    v.add_argument("--from", dest="fmt", required=True, choices=["voc", "yolo", "labelme", "cvat", "openimages", "coco"])
    v.add_argument("--to", choices=["coco", "yolo"], default="coco")
    v.add_argument("--out", required=True, help="the COCO file to write (--to yolo: the labels folder)")
    v.add_argument("--images-dir", help="where the images are (default: found beside the annotations)")
    v.add_argument("--names", help="YOLO: the class-names file (classes.txt, obj.names or data.yaml); Open Images: the "
                   "class-descriptions CSV (default: found beside the annotations)")
    v.add_argument("--force", action="store_true", help="overwrite an existing output")
    v.set_defaults(func=_convert)

    s = sub.add_parser("sample-data", help="write the built-in synthetic COCO dataset")
    s.add_argument("out", help="output folder, e.g. data/sample")
    s.add_argument("--images", type=int, default=None, help="number of images (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample_data)


def _audit_parser(sub) -> None:
    a = sub.add_parser("audit-labels", help="rank labels that are probably wrong from a k-fold run's out-of-fold "
                       "predictions, with suggested fixes")
    a.add_argument("run", help="a `detector cv` run folder or a study trial (studies/NAME/trial_NNNN)")
    a.add_argument("--top", type=_positive_int, default=20, help="how many issues to draw (default 20)")
    a.add_argument("--confident", type=_fraction(False), default=0.5,
                   help="the score from which a prediction counts as evidence (default 0.5)")
    a.add_argument("--out", help="write the audit into this folder instead of the run folder (for a run you "
                   "cannot or would rather not write to)")
    a.add_argument("--force", action="store_true",
                   help="replace a label_fixes.coco.json edited since the last audit wrote it")
    a.set_defaults(func=_audit)


def _audit(args) -> int:
    from .analysis.label_audit import KINDS, AuditSettings, audit_into

    index, issues, written = audit_into(args.run, args.out, AuditSettings(confident=args.confident), top=args.top,
                                        force=args.force)
    counts = ", ".join(f"{sum(i.kind == k for i in issues)} {k}" for k in KINDS)
    print(f"{len(issues)} suspected label issues in {len(index.images)} training images ({counts})")
    for i in issues[:10]:
        print(f"  {i.confidence:.2f}  {i.kind:<11} {i.file_name}  box {[round(v) for v in i.bbox]}  fix {i.suggestion}")
    print(f"wrote {written.issues}, {written.fixes} (the training file with every fix applied, to review; "
          f"its file names are relative to {index.images_dir}: train on it with --set "
          f"data.train.annotations={written.fixes} --set data.train.images={index.images_dir}) and "
          f"{len(written.drawings)} drawings in {written.fixes.parent / 'label_issues'}/")
    return 0


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, f"{text!r} is not a positive integer")


def _bootstrap_resamples(text: str) -> int:
    value = _int_at_least(text, 0, f"{text!r} is not 0 or a number of resamples from 100 to 100000")
    if value != 0 and not 100 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 or a number of resamples from 100 to 100000")
    return value


def _int_at_least(text: str, low: int, error: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(error)
    return value


def _fraction(zero_ok: bool):
    """A float in [0, 1] (or (0, 1] when not zero_ok), for thresholds given on the command line."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (0.0 <= value <= 1.0) or (value == 0.0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"{text!r} must be a number in {'[0' if zero_ok else '(0'}, 1]")
        return value
    return parse


def _run_arguments(p: argparse.ArgumentParser, config_help: str) -> argparse.ArgumentParser:
    p.add_argument("config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.001 (repeatable)")
    p.add_argument("--out", help="run directory (default runs/CONFIG-TIMESTAMP); an existing one is resumed")
    p.add_argument("--force", action="store_true", help="start an existing --out over if its config differs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--mlflow", metavar="URI", default=None,
                    help="log to this MLflow tracking server, e.g. http://127.0.0.1:5000 (default: "
                         "MLFLOW_TRACKING_URI when set)")
    return p


def _train(args) -> int:
    from . import api

    run = _run_dir(args)
    print(f"run directory: {run}")
    result = api.train(args.config, run, overrides=args.overrides, force=args.force, progress=_progress(args), log=print,
                       mlflow=args.mlflow)
    m = result.best_metrics
    if m is None:
        print(f"no epoch scored a finite score, so no best model was kept ({result.epochs_run} epochs run)")
    else:
        print(f"best epoch {result.best_epoch}: map_50 {m.map_50:.4f}  f1 {m.f1:.4f}  score {m.score:.4f}  "
              f"-> {result.best_path}")
    return 0


def _cv(args) -> int:
    from . import api
    from .report import format_cv, format_published

    run = _run_dir(args)
    print(f"run directory: {run}")
    result = api.cv(args.config, run, overrides=args.overrides, force=args.force, progress=_progress(args), log=print,
                    mlflow=args.mlflow)
    print(format_cv(result.folds, result.mean, result.std))
    if result.published is not None:
        print(format_published(result.published, result.mean))
    return 0


def _progress(args) -> bool:
    """Bars on a terminal only: written to a file, the log keeps its one line per epoch and trial."""
    return not args.quiet and sys.stderr.isatty()


def _run_dir(args) -> Path:
    from .api import default_run_dir

    return Path(args.out) if args.out else default_run_dir(args.config)


def _study(args) -> int:
    from . import api
    from .distributed import world

    directory = Path(args.studies_dir) / args.name
    print(f"study folder: {directory}")
    result = api.study(args.config, args.name, studies_dir=args.studies_dir, storage=args.storage, mlflow=args.mlflow,
                       n_trials=args.n_trials, timeout=args.timeout, overrides=args.overrides,
                       progress=_progress(args), log=print, artifacts=args.artifacts)
    if not world().main:  # under torchrun rank 0 speaks for the study
        return 0
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items())
    print(f"study {result.name}: {states}")
    latency = f", {result.best_latency_ms:.1f} ms per image" if result.best_latency_ms is not None else ""
    fetch = f": detector fetch {result.name} --out DIR brings it here" if api.artifacts_url(args.artifacts) else ""
    where = f"best/ published by {result.published_by}{fetch}" if result.published_by else \
        f"models in {directory / 'best'}"
    print(f"best trial {result.best_trial}: value {result.best_value:.4f}{latency}; {where}")
    print(f"details: detector report {directory}")
    return 0


def _fetch(args) -> int:
    from . import api

    api.fetch(args.study, args.out, storage=args.storage, artifacts=args.artifacts, force=args.force, log=print)
    return 0


def _predict(args) -> int:
    from . import api

    models, images = _split_models(args.inputs)
    options = {k: v for k, v in (("iou_thr", args.iou_thr), ("skip_box_thr", args.skip_box_thr),
                                 ("conf_type", args.conf_type), ("slice", args.slice), ("slice_overlap", args.overlap),
                                 ("slice_whole", args.slice_whole), ("score_threshold", args.score_threshold))
               if v is not None}
    ensemble = api.load(models, device=args.device, **options)
    found = api.predict(ensemble, images, out=args.out, gt=args.gt, images_dir=args.images_dir, tta=args.tta == "hflip",
                        draw=args.draw, batch_size=args.batch_size, force=args.force, progress=_progress(args),
                        log=print)
    run, thresholds = found.run, ensemble.thresholds
    boxes = sum(s >= thresholds.of(c) for p in run.predictions for s, c in zip(p.scores.tolist(), p.category_ids))
    per_class = f" ({len(thresholds.per_class)} class(es) with thresholds of their own)" if thresholds.per_class else ""
    print(f"{len(run.predictions)} images, {boxes} boxes with score >= {thresholds.default:.2f}{per_class} from "
          f"{len(ensemble.members)} model(s){' with hflip TTA' if args.tta else ''} -> {args.out}")
    print("  " + ", ".join(p.name for p in found.written)
          + (f", {found.drawings} drawings in drawn/" if args.draw else ""))
    if run.skipped:
        print(f"skipped {len(run.skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in run.skipped:
            print(f"  {reason}", file=sys.stderr)
    for path, note in run.truncated:
        print(f"warning: {path}: {note}", file=sys.stderr)
    if run.by_name:
        print(f"{run.by_name} image(s) matched to their --gt entry by file name only (the entry's own file "
              "is not there)")
    if found.report is not None:
        _print_ground_truth(found.report)
    return 0


def _print_ground_truth(report) -> None:
    """predict --gt: the ensemble beside its members, per class, its confusion matrix and error breakdown."""
    from .report import format_comparison, format_confusion, format_errors, format_per_class

    print(format_comparison(report.rows))
    print("\nensemble per class at its operating point:\n" + format_per_class(report.ensemble.metrics))
    print("\n" + format_confusion(report.ensemble.confusion) + "\n\n" + format_errors(report.ensemble.errors))
    print("  " + ", ".join(p.name for p in report.written)
          + f", {len(report.worst)} drawings of the images with the most errors in worst/")


def _export(args) -> int:
    from . import api
    from .deploy.export import read_labels
    from .deploy.quantize import QuantizationReport

    for path in api.export(args.model, args.format, args.out, quantize=args.quantize, calibration=args.calibration,
                           half=args.half, force=args.force):
        print(f"wrote {path}")
        if args.quantize and path.suffix == ".onnx":
            print("  " + QuantizationReport.from_dict(read_labels(path)["int8"]).summary())
    return 0


def _benchmark(args) -> int:
    from . import api
    from .files import write_json
    from .outputs import claim_file

    if args.json:
        claim_file(args.json, [args.model], force=args.force, flag="--json")
    report = api.benchmark(args.model, args.images, sizes=_ints(args.sizes, "--sizes", most=api.MAX_SIDE, least=32),
                           batch_sizes=_ints(args.batch_sizes, "--batch-sizes", most=256) or [1],
                           runtimes=args.runtimes.split(","), limit=args.limit, repeats=args.repeats,
                           device=args.device)
    print(report.table())
    if args.json:
        write_json(Path(args.json), report.to_dict())
        print(f"wrote {args.json}")
    return 0


def _ints(text: str, flag: str, most: int, least: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: comma-separated whole numbers, e.g. 1,4") from None
    if any(not least <= v <= most for v in values):
        raise ConfigError(f"{flag} {text!r}: every value must lie in [{least}, {most}]")
    return values


def _split_models(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Leading checkpoints / best folders / top_models.json are models; the rest are images."""
    from .inference.ensemble import is_models_path

    n = 0
    while n < len(inputs) and is_models_path(inputs[n]):
        n += 1
    if n == 0:
        raise DetectorError(f"{inputs[0]}: not a model; give a study's best/ folder, a run's top_models.json "
                            "or .pt checkpoints before the images")
    return inputs[:n], inputs[n:]


def _report(args) -> int:
    from .layout import StudyPaths
    from .report import report_run

    run = Path(args.run)
    if not run.is_dir():
        raise DetectorError(f"{run}: no such run, study or trial directory")
    if StudyPaths(run).meta.exists():
        from .search import report_study

        text, _ = report_study(run, args.format, args.storage)
    else:
        text, _ = report_run(run, args.format)
    print(text)
    return 0


def _evaluate(args) -> int:
    from . import api
    from .report import format_differences, format_metrics, strict_json

    scored = api.evaluate(args.models, args.annotations, predictions=args.predictions, against=args.against,
                          images_dir=args.images_dir, score_threshold=args.score_threshold, bootstrap=args.bootstrap,
                          batch_size=args.batch_size, device=args.device, progress=_progress(args) and not args.json)
    if args.json:
        print(json.dumps(strict_json(scored.to_dict()), indent=2))
    else:
        print(format_metrics(scored.scorecard))
        for name, diffs in scored.versus:
            print(f"\n{scored.name} minus {name} on the same {scored.images} images "
                  f"({scored.metrics.bootstrap or 'no bootstrap'}):\n" + format_differences(diffs))
    for warning in scored.scorecard.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _check_data(args) -> int:
    from . import api
    from .config import DataConfig
    from .data.summary import format_summary

    found = api.check_data(*args.annotations, images_dir=args.images_dir, strict=args.strict,
                           copy_similarity=args.copy_similarity)
    summaries = found.summaries
    if args.json:
        doc = summaries[0] if len(summaries) == 1 else {"files": summaries, "shared": found.shared,
                                                         "usable": found.usable}
        print(json.dumps(doc, indent=2))
        return 0 if found.usable else 1
    for s in summaries:
        print(format_summary(s) if "images" in s else f"{s['annotations']}: error: {s['errors'][0]}")
    if len(summaries) > 1:
        print(_format_shared(found.shared, DataConfig().test_copy_error)
              + ("\nusable together: yes" if found.usable else "\nusable together: NO"))
    return 0 if found.usable else 1


def _format_shared(shared: list[dict], certain: float) -> str:
    if not shared:
        return "shared across files: none (no file, bytes or photo of one file in another)"
    lines = [f"shared across files ({len(shared)}): a later split holds these photos of an earlier one; remove "
             f"them from one of the two files (from similarity {certain}: certain, the rest probable)"]
    lines += [f"  - {s['image']} is {s['copy_of']} ({s['how']})" for s in shared]
    return "\n".join(lines)


def _init(args) -> int:
    from . import api

    started = api.init(args.annotations, args.out, val=args.val, test=args.test, images_dir=args.images_dir,
                       force=args.force)
    starter, out = started.starter, Path(args.out)
    print("\n".join(starter.header))
    print("\n".join(f"{k}: {starter.get(k)}  ({why})" for k, why in starter.reasons.items()))
    print(f"wrote {', '.join(map(str, started.written))}\nnext: detector train {out} --out runs/{out.stem}   or   "
          f"detector study {out} --name {out.stem}")
    return 0


def _convert(args) -> int:
    from . import api

    out = Path(args.out)
    done = api.convert(args.source, out, fmt=args.fmt, to=args.to, images_dir=args.images_dir, names=args.names,
                       force=args.force)
    if args.to == "yolo":
        print(f"wrote {len(done.written) - 1} label files and {done.written[0]} ({len(done.classes)} classes) to {out}")
        return 0
    for warning in done.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    index, root = done.index, done.root
    boxes = sum(len(r.boxes) for r in index.images)
    where = "" if root == out.parent.resolve() else f" --images-dir {root}"
    print(f"wrote {out}: {len(index.images)} images ({sum(1 for r in index.images if not len(r.boxes))} without "
          f"boxes), {boxes} boxes, classes {', '.join(done.classes)}; file names relative to {root}\n"
          f"next: detector check-data {out}{where}   or   detector init {out}{where} --out my.yaml")
    return 0


def _sample_data(args) -> int:
    from .data.sample import SampleSpec, write_sample_dataset

    spec = SampleSpec(seed=args.seed) if args.images is None else SampleSpec(images=args.images, seed=args.seed)
    paths = write_sample_dataset(args.out, spec)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
