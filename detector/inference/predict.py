"""`detector predict`: collect image files, run an Ensemble, and write predictions.json/.csv and drawings."""
from __future__ import annotations

import csv
import filecmp
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from ..config import ScoreConfig
from ..analysis.confusion import ConfusionMatrix
from ..analysis.error_breakdown import Breakdown
from ..analysis.scorecard import Scorecard, score as score_results
from ..data.coco import CocoIndex, load_coco
from ..data.images import IMAGE_SUFFIXES, read_image
from ..data.results import coco_detections
from .ensemble import Ensemble, ImagePrediction
from ..errors import DatasetError, DetectorError
from ..files import atomic_file, read_json, remove_entry, write_json
from ..intervals import PAIRED, Bootstrap, compare
from ..layout import PredictPaths
from ..metrics import Thresholds
from ..plots import confusion_figure, save_figures



@dataclass
class PredictionRun:
    predictions: list[ImagePrediction]
    image_ids: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    by_name: int = 0  # images matched to their --gt entry by file name alone (the entry's own file is absent)
    truncated: list[tuple[str, str]] = field(default_factory=list)  # (file, what is wrong): predicted all the same

    def member(self, i: int) -> "PredictionRun":
        """The same images as predicted by member i alone (needs run_predictions(with_members=True))."""
        return PredictionRun([p.members[i] for p in self.predictions], self.image_ids, self.skipped, self.by_name,
                             self.truncated)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their image files, recursively) and glob patterns -> image paths, sorted per input."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found.append(p)
        elif any(c in str(item) for c in "*?["):
            found += sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
        else:
            raise DatasetError(f"{item}: no such image file, folder or glob match")
    if not found:
        raise DatasetError(f"no image files in {', '.join(map(str, inputs))}")
    unique: dict[Path, Path] = {}
    for p in found:  # one file under two spellings (a/../a/x.jpg, a link) is predicted once
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def run_predictions(ensemble: Ensemble, images: Sequence[Path], *, gt: CocoIndex | None = None,
                    batch_size: int = 8, tta: bool = False, progress: bool = False,
                    with_members: bool = False, done: Mapping[str, ImagePrediction] | None = None,
                    on_image: Callable[[ImagePrediction, int], Any] | None = None) -> PredictionRun:
    """Predict every image (all scores kept); unreadable files are skipped with their reason.

    `done` maps files already predicted (OutputWriter.done on a resumed run) to their predictions, which
    are used as they are. `on_image(prediction, image_id)` is called as each new image finishes
    (OutputWriter.add writes it).
    """
    done = done or {}
    ids, by_name = _image_ids(images, gt)
    todo = [p for p in images if str(p) not in done]
    stream = ensemble.iter_predict(todo, batch_size=batch_size, tta=tta, score_threshold=0.0, progress=progress,
                                   with_members=with_members)
    predictions, kept_ids, skipped, truncated = [], [], [], []
    for path, image_id in zip(images, ids):
        if str(path) in done:
            predictions.append(done[str(path)])
            kept_ids.append(image_id)
            continue
        p, error = next(stream)
        if p is None:
            skipped.append((str(path), error))
            continue
        if error is not None:
            truncated.append((str(path), error))
        predictions.append(p)
        kept_ids.append(image_id)
        if on_image is not None:
            on_image(p, image_id)
    return PredictionRun(predictions, kept_ids, skipped, by_name, truncated)


def _image_ids(images: Sequence[Path], gt: CocoIndex | None) -> tuple[list[int], int]:
    """The --gt image id of each file, and how many were matched by file name alone: by its path first;
    else by a base name that one --gt entry has, when the entry's own file is absent or has the same bytes
    (a file of that name with other content is another image)."""
    if gt is None:
        return list(range(1, len(images) + 1)), 0
    by_path = {r.path.resolve(): r.id for r in gt.images}
    named: dict[str, list] = {}
    for r in gt.images:
        named.setdefault(Path(r.file_name).name, []).append(r)
    ids, by_name, seen = [], 0, {}
    for p in images:
        image_id = by_path.get(p.resolve())
        candidates = named.get(p.name, [])
        if image_id is None and len(candidates) == 1 and _same_or_absent(p, candidates[0].path):
            image_id, by_name = candidates[0].id, by_name + 1
        if image_id is None:
            why = (f"{len(candidates)} entries have its name" if len(candidates) > 1 else
                   f"the entry of that name is another file, {candidates[0].path}" if candidates else
                   "no entry has its path or name")
            raise DatasetError(f"{p}: not an image of {gt.path} ({why}); with --gt, predict the images of that "
                               "file (or leave IMAGES out to predict all of them)")
        if image_id in seen:
            raise DatasetError(f"{p} and {seen[image_id]} are the same image of {gt.path}; give it once")
        seen[image_id] = p
        ids.append(image_id)
    return ids, by_name


def _same_or_absent(path: Path, entry: Path) -> bool:
    return not entry.exists() or filecmp.cmp(path, entry, shallow=False)


def coco_results(run: PredictionRun) -> list[dict[str, Any]]:
    """COCO results (xywh pixels, the dataset's category ids) of every box."""
    return [r for p, image_id in zip(run.predictions, run.image_ids)
            for r in coco_detections(image_id, p.boxes, p.scores.tolist(), p.category_ids)]


class OutputWriter:
    """predict's outputs, written as images finish so an interrupted run keeps what it did.

    At once per image: its rows in predictions.csv (boxes at or above the thresholds), its drawing with `draw`,
    and the whole prediction appended to predictions.partial.jsonl, whose first line records the `job`
    (models, settings, images). A writer for the same job picks those images up again (`done`) instead of
    predicting them twice; any other job starts the folder's outputs afresh, and refuses to replace the
    outputs of another job (job.json) without `force`. close() writes
    predictions.json (every box) and images.json atomically and removes the partial file.
    """

    def __init__(self, out: str | Path, thresholds: Thresholds, *, draw: bool = False,
                 job: dict[str, Any] | None = None, force: bool = False):
        self.out, self.thresholds, self.draw = Path(out), thresholds, draw
        self.paths = PredictPaths(out)
        if self.out.exists() and not self.out.is_dir():
            raise DetectorError(f"{self.out}: is a file; --out is the folder predict writes its outputs to")
        self.out.mkdir(parents=True, exist_ok=True)
        self.partial = self.paths.partial
        header = {"job": {**(job or {}), **thresholds.to_dict(), "draw": draw}}
        finished = _read_partial(self.partial, header)
        if not finished:
            self._start_afresh(header, force)
        self.done: dict[str, ImagePrediction] = {}
        self.images: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.drawn: set[str] = set()
        self.csv_file = self.paths.table.open("w", newline="")
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(["file", "class", "score", "x1", "y1", "x2", "y2"])
        with atomic_file(self.partial, "w") as f:
            f.write(json.dumps(header) + "\n")
            for record in finished:
                f.write(json.dumps(record) + "\n")
        for record in finished:
            p = ImagePrediction.from_dict(record["prediction"])
            self.done[p.source] = p
            self._record(p, record["image"])
        self.csv_file.flush()

    def add(self, p: ImagePrediction, image_id: int) -> None:
        image = {"id": image_id, "file_name": p.source, "width": p.width, "height": p.height}
        if self.draw:
            image["drawing"] = str(draw_prediction(p, self.paths.drawn, self.thresholds,
                                                   self._drawing_name(p.source)).relative_to(self.out))
        self._record(p, image)
        self.csv_file.flush()
        with self.partial.open("a") as f:
            f.write(json.dumps({"image": image, "prediction": p.to_dict()}) + "\n")

    def _record(self, p: ImagePrediction, image: dict[str, Any]) -> None:
        for box, score, name, cid in zip(p.boxes.tolist(), p.scores.tolist(), p.names, p.category_ids):
            if score >= self.thresholds.of(cid):
                self.csv.writerow([p.source, name, f"{score:.4f}", *(f"{v:.1f}" for v in box)])
        self.results += coco_detections(image["id"], p.boxes, p.scores.tolist(), p.category_ids)
        if "drawing" in image:
            self.drawn.add(Path(image["drawing"]).name)
        self.images.append(image)

    def close(self) -> list[Path]:
        self.csv_file.close()
        write_json(self.paths.predictions, self.results, indent=None)
        write_json(self.paths.images, self.images, indent=1)
        self.partial.unlink(missing_ok=True)
        return [self.paths.predictions, self.paths.table, self.paths.images]

    def _start_afresh(self, header: dict[str, Any], force: bool) -> None:
        """Remove the outputs an earlier job left in the folder, so none of them mixes with this job's: the
        same job's without asking, another job's (or unknown ones) only with `force`."""
        old = [p for p in (self.paths.predictions, self.paths.table, self.paths.images, self.partial,
                           self.paths.drawn) if p.exists()]
        job = self.paths.job
        same = job.exists() and _recorded_job(job) == json.loads(json.dumps(header))
        if old and not same and not force:
            raise DetectorError(f"{self.out}: holds the outputs of another predict job "
                                f"({', '.join(p.name for p in old)}); use another --out, or --force to replace them")
        for p in old:
            remove_entry(p)
        write_json(job, header)

    def _drawing_name(self, source: str) -> str:
        """The file's stem, numbered when two inputs share one (a/x.png and b/x.png)."""
        stem, n = Path(source).stem, 1
        name = f"{stem}.png"
        while name in self.drawn:
            n += 1
            name = f"{stem}_{n}.png"
        self.drawn.add(name)
        return name


def _recorded_job(path: Path) -> Any:
    try:
        return read_json(path)
    except DetectorError:
        return None  # unreadable: treated as another job's


def _read_partial(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished images an interrupted run of the same job left in `path` (a torn last line is dropped)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    try:
        if not lines or json.loads(lines[0]) != json.loads(json.dumps(header)):
            return []
    except json.JSONDecodeError:
        return []
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when the run was killed
            break
    return records


def draw_prediction(p: ImagePrediction, out_dir: Path, thresholds: Thresholds, file_name: str | None = None,
                    ground_truth: Sequence[dict[str, Any]] = (), note: str = "") -> Path:
    """OUT_DIR/FILE_NAME (default: the image's stem, .png): the image with the boxes scoring at least their
    threshold in their class's colour; with `ground_truth` (COCO annotations) those boxes in white with a
    black edge, with `note` a line of text in its corner."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(read_image(p.source))
    canvas = ImageDraw.Draw(image)
    colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]
    width = max(1, round(max(p.width, p.height) / 400))
    for a in ground_truth:
        x, y, w, h = a["bbox"]
        canvas.rectangle([x, y, x + w, y + h], outline="black", width=width + 2)
        canvas.rectangle([x, y, x + w, y + h], outline="white", width=width)
    for box, score, label, name, cid in zip(p.boxes.tolist(), p.scores.tolist(), p.labels.tolist(), p.names,
                                            p.category_ids):
        if score < thresholds.of(cid):
            continue
        color = colors[(label - 1) % len(colors)]
        canvas.rectangle(box, outline=color, width=width)
        canvas.text((box[0] + 2, max(box[1] - 11, 0)), f"{name} {score:.2f}", fill=color)
    if note:
        canvas.text((4, 4), note, fill="yellow")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (file_name or f"{Path(p.source).stem}.png")
    image.save(path)
    return path


def draw_worst(run: PredictionRun, gt: CocoIndex, breakdown: Breakdown, thresholds: Thresholds, out_dir: str | Path,
               n: int = 8) -> list[Path]:
    """OUT/worst/RANK_NAME.png for the `n` images with the most errors at the operating point: the ground
    truth in white (with a black edge), the kept predictions in their class colours, and the image's errors
    by cause in its corner."""
    records = {r.id: r for r in gt.images}
    predictions = dict(zip(run.image_ids, run.predictions))
    paths = []
    for rank, image_id in enumerate(breakdown.worst(n)):
        p = predictions[image_id]
        note = ", ".join(f"{k} {v}" for k, v in breakdown.per_image[image_id].items() if v)
        paths.append(draw_prediction(p, PredictPaths(out_dir).worst, thresholds, f"{rank:02d}_{Path(p.source).stem}.png",
                                     ground_truth=records[image_id].annotations, note=note))
    return paths


def ground_truth_metrics(run: PredictionRun, gt: CocoIndex, thresholds: Thresholds, members: int = 0, *,
                         iou_threshold: float = 0.5, score: ScoreConfig | None = None,
                         bootstrap: Bootstrap | None = None) -> list[tuple[str, Scorecard]]:
    """[(name, scorecard)] of the ensemble and, next to it, of each of its `members` alone, at `thresholds`;
    the ensemble's holds its confusion matrix and error breakdown. With `bootstrap`, each holds bootstrap
    intervals, and the ensemble's its paired difference to each member (versus_members)."""
    coco = gt.subset(run.image_ids).to_coco()
    bootstrap = bootstrap or Bootstrap(0)
    runs = [("ensemble", run)] + [(f"member {i}", run.member(i)) for i in range(members if members > 1 else 0)]
    scored = [score_results(coco, coco_results(r), thresholds, iou_threshold=iou_threshold,
                            score=score or ScoreConfig(), bootstrap=bootstrap, errors=i == 0)
              for i, (_, r) in enumerate(runs)]
    rows = [(name, card) for (name, _), (card, _) in zip(runs, scored)]
    if bootstrap.resamples and len(scored) > 1:
        parts = [p for _, p in scored]
        versus = tuple(compare(parts[0], p, bootstrap, PAIRED) for p in parts[1:])
        rows[0] = ("ensemble", rows[0][1].with_(versus_members=versus))
    return rows


def write_confusion(out_dir: str | Path, confusion: ConfusionMatrix) -> list[Path]:
    """confusion.json and its plot, confusion.png, in a predict output folder."""
    paths = PredictPaths(out_dir)
    saved = confusion.to_dict()
    write_json(paths.confusion, saved)
    figure = confusion_figure(saved["classes"], saved["counts"], "ensemble at its operating point")
    return [paths.confusion, *save_figures({paths.confusion_plot.stem: figure}, paths.root)]


def load_ground_truth(path: str | Path, ensemble: Ensemble, images_dir: str | Path | None = None) -> CocoIndex:
    return load_coco(path, images_dir, label_map=ensemble.label_map, keep_empty=True)


@dataclass
class GroundTruthReport:
    """predict with ground truth: the ensemble and each member alone [(name, metrics)], the files written
    beside the predictions (confusion.json/.png, errors.json) and the drawings of the worst images."""

    rows: list[tuple[str, Scorecard]]
    written: list[Path]
    worst: list[Path]

    @property
    def ensemble(self) -> Scorecard:
        """The ensemble's, with its per-class rows, confusion matrix and error breakdown."""
        return self.rows[0][1]


def ground_truth_report(run: PredictionRun, gt: CocoIndex, ensemble: Ensemble, out: str | Path) -> GroundTruthReport:
    """The ensemble beside its members at its operating point, with the members' config's scoring and
    bootstrap; its confusion matrix and error breakdown written to `out`, its worst images drawn there."""
    cfg, thresholds, paths = ensemble.members[0].config, ensemble.thresholds, PredictPaths(out)
    rows = ground_truth_metrics(run, gt, thresholds, len(ensemble.members), iou_threshold=cfg.eval.iou_threshold,
                                score=cfg.score, bootstrap=Bootstrap(cfg.eval.bootstrap))
    card = rows[0][1]
    worst = draw_worst(run, gt, card.errors, thresholds, paths.root)
    written = [*write_confusion(paths.root, card.confusion), write_json(paths.errors, card.errors.to_dict())]
    return GroundTruthReport(rows, written, worst)
