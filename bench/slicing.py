"""Small objects in large images: plain resize vs sliced inference vs sliced training + inference.

The data is made from the shipped RBC export: each canvas is a SIDE x SIDE field (default 1664 = 4 x 416 px)
of the images' own median colour with PER_CANVAS RBC images pasted at full resolution into random cells of
a 4 x 4 grid, their boxes moved with them. At data.image_size 416 a whole canvas shrinks 4 times, so a
cell of 40-60 px becomes 10-15 px at the model's input. Training canvases draw their images from train/
(as many canvases as train/ has images, so every model takes the same number of steps per epoch),
validation canvases from valid/, test canvases from the untouched test/ (each image once).

Three models, the same recipe (configs/finetune.yaml at 416 px, the packaged tf_efficientnet_lite0), the
same epochs and seed:
  canvas-whole  trained on whole training canvases (what a user without slicing trains)
  rbc-images    trained on the original 416 px RBC images (objects labelled in small images, seen large)
  canvas-crop   trained on 416 px crops of the training canvases (data.augment.crop=416, ensemble.slice=auto)
Each is scored on the test canvases by detector's evaluator (mAP, mAP@0.5, AR@100; not COCO's AP-small:
its size ranges count the file's pixels, where these cells are medium, 40-60 px; the resize is what makes
them small), whole (plain resize) and sliced (`ensemble.slice: auto`: tiles of the side it trained at, with the
default `ensemble.slice_overlap` and `slice_whole`, or --overlap and --whole), with the seconds per canvas
of prediction alone.

    python bench/slicing.py                   # 3 epochs, about 40 minutes on 2 CPU cores
    python bench/slicing.py --side 3328 --models canvas-whole,canvas-crop   # cells of 5-7 px when resized
    python bench/slicing.py --large runs/rbc/best.pt       # peak memory of --slice auto on a 6000x4000 image
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from detector import config
from detector.data.coco import load_coco
from detector.data.splits import load_splits
from detector.data.results import coco_detections
from detector.inference.ensemble import Ensemble
from detector.metrics import evaluate_detections
from detector.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
RBC = ROOT / "examples" / "rbc"
GRID = 4


def make_canvases(split: Path, out: Path, count: int | None, per_canvas: int, side: int, seed: int) -> Path:
    """OUT/_annotations.coco.json and its canvases; `count` None uses each image of `split` once."""
    source = json.loads(split.read_text())
    anns: dict[int, list[dict]] = {}
    for a in source["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in source["images"]]
    groups = ([rng.choice(ids, per_canvas, replace=False).tolist() for _ in range(count)] if count else
              [ids[k:k + per_canvas] for k in range(0, len(ids), per_canvas)])
    by_id = {im["id"]: im for im in source["images"]}
    out.mkdir(parents=True, exist_ok=True)
    doc = {"images": [], "annotations": [], "categories": source["categories"]}
    cell = side // GRID
    for n, group in enumerate(groups):
        pictures = [np.asarray(Image.open(split.parent / by_id[i]["file_name"]).convert("RGB")) for i in group]
        canvas = np.empty((side, side, 3), np.uint8)
        canvas[:] = np.median(np.concatenate([p.reshape(-1, 3) for p in pictures]), axis=0).astype(np.uint8)
        for image_id, picture, slot in zip(group, pictures, rng.choice(GRID * GRID, len(group), replace=False)):
            h, w = picture.shape[:2]
            x0 = int(slot % GRID * cell + rng.integers(0, max(cell - w, 0) + 1))
            y0 = int(slot // GRID * cell + rng.integers(0, max(cell - h, 0) + 1))
            h, w = min(h, side - y0), min(w, side - x0)
            canvas[y0:y0 + h, x0:x0 + w] = picture[:h, :w]
            for a in anns.get(image_id, []):
                x, y, bw, bh = a["bbox"]
                doc["annotations"].append({**a, "id": len(doc["annotations"]) + 1, "image_id": n + 1,
                                           "bbox": [x + x0, y + y0, bw, bh]})
        name = f"canvas-{n:04d}.jpg"
        Image.fromarray(canvas).save(out / name, quality=95)
        doc["images"].append({"id": n + 1, "file_name": name, "width": side, "height": side})
    path = out / "_annotations.coco.json"
    path.write_text(json.dumps(doc))
    return path


def train(name: str, train_json: Path, val_json: Path, run: Path, epochs: int, extra: list[str]) -> Path:
    cfg = config.load(ROOT / "configs" / "finetune.yaml", [
        f"data.train.annotations={train_json}", f"data.val.annotations={val_json}", "data.image_size=416",
        f"train.epochs={epochs}", "train.patience=0", *extra])
    train_index, val_index = load_splits(cfg)
    print(f"{name}: {len(train_index.images)} training images, {epochs} epochs", flush=True)
    started = time.perf_counter()
    fit(cfg, train_index, val_index, run, progress=False, log=lambda s: print("  " + s, flush=True))
    print(f"  trained in {time.perf_counter() - started:.0f} s", flush=True)
    return run / "best.pt"


def score(checkpoint: Path, test_json: Path, slice_setting: int | str, overlap: float, whole: bool,
          ) -> dict[str, float]:
    ensemble = Ensemble.load(checkpoint, device="cpu",
                             overrides={"slice": slice_setting, "slice_overlap": overlap, "slice_whole": whole})
    test = load_coco(test_json)
    started = time.perf_counter()
    predicted = ensemble.predict([r.path for r in test.images], score_threshold=0.0)
    seconds = (time.perf_counter() - started) / len(test.images)
    ids = ensemble.label_map.category_ids
    results = [d for r, p in zip(test.images, predicted)
               for d in coco_detections(r.id, p.boxes, p.scores, [ids[int(k) - 1] for k in p.labels])]
    m = evaluate_detections(test.to_coco(), results, score_threshold=None)
    return {"map": m.map, "map_50": m.map_50, "mar_100": m.value("mar_100"), "seconds": seconds}


def large_photo(checkpoint: Path, width: int, height: int, folder: Path) -> None:
    """Peak memory and seconds of `detector predict --slice auto` on one width x height image (RBC images
    tiled edge to edge: cells everywhere, as many boxes as tiles can hold), against plain predict of the same
    image in the same run. Each runs in a process of its own; its peak resident memory is its ru_maxrss."""
    import resource
    import subprocess
    import sys

    sources = sorted((RBC / "train").glob("*.jpg"))
    canvas = Image.new("RGB", (width, height))
    for k, (y, x) in enumerate((y, x) for y in range(0, height, 416) for x in range(0, width, 416)):
        canvas.paste(Image.open(sources[k % len(sources)]).convert("RGB"), (x, y))
    image = folder / "large.jpg"
    canvas.save(image, quality=90)
    print(f"one {width}x{height} image of tiled RBC photos; {checkpoint}", flush=True)
    rows = {}
    for how, extra in (("plain", []), ("sliced", ["--slice", "auto"])):
        out = folder / f"preds_{how}"
        code = ("import resource, runpy, sys, time; sys.argv = ['detector'] + sys.argv[1:]; start = time.time()\n"
                "try:\n    runpy.run_module('detector.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                "print('SECONDS', time.time() - start, 'PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code, "predict", str(checkpoint), str(image), "--out", str(out),
                               "--quiet", *extra], capture_output=True, text=True)
        fields = done.stdout.split()
        seconds, peak = float(fields[fields.index("SECONDS") + 1]), int(fields[fields.index("PEAK_KB") + 1])
        boxes = len(json.loads((out / "predictions.json").read_text()))
        rows[how] = (seconds, peak / 1024, boxes)
        print(f"  {how:<7} {seconds:7.1f} s   peak {peak / 1024:7.0f} MiB   {boxes} boxes", flush=True)
    print(f"  sliced / plain: {rows['sliced'][0] / rows['plain'][0]:.1f}x the seconds, "
          f"{rows['sliced'][1] / rows['plain'][1]:.2f}x the peak memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", metavar="CHECKPOINT", help="only measure peak memory and seconds of --slice auto "
                        "on one --large-size image with this checkpoint")
    parser.add_argument("--large-size", default="6000x4000", help="WIDTHxHEIGHT of the --large image")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--side", type=int, default=1664)
    parser.add_argument("--per-canvas", type=int, default=3)
    parser.add_argument("--models", default="canvas-whole,rbc-images,canvas-crop")
    defaults = config.EnsembleConfig()
    parser.add_argument("--overlap", type=float, default=defaults.slice_overlap, help="ensemble.slice_overlap")
    parser.add_argument("--whole", action=argparse.BooleanOptionalAction, default=defaults.slice_whole,
                        help="ensemble.slice_whole: the whole canvas as one more tile")
    parser.add_argument("--keep", help="a folder for the canvases and runs (default: a temporary one)")
    args = parser.parse_args()
    if args.large:
        with tempfile.TemporaryDirectory() as tmp:
            width, height = (int(v) for v in args.large_size.lower().split("x"))
            large_photo(Path(args.large), width, height, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        splits = {s: RBC / s / "_annotations.coco.json" for s in ("train", "valid", "test")}
        train_count = len(json.loads(splits["train"].read_text())["images"])
        canvases = {s: make_canvases(p, work / "canvases" / s, train_count if s == "train" else None,
                                     args.per_canvas, args.side, seed=k) for k, (s, p) in enumerate(splits.items())}
        test = load_coco(canvases["test"])
        print(f"test: {len(test.images)} canvases of {args.side} px, {sum(len(r.boxes) for r in test.images)} boxes",
              flush=True)
        variants = {  # name: (training split, validation split, overrides)
            "canvas-whole": (canvases["train"], canvases["valid"], []),
            "rbc-images": (splits["train"], splits["valid"], []),
            "canvas-crop": (canvases["train"], canvases["valid"], [
                "data.augment.crop=416", "ensemble.slice=auto", f"ensemble.slice_overlap={args.overlap}",
                f"ensemble.slice_whole={str(args.whole).lower()}"]),
        }
        models = {name: train(name, *variants[name][:2], work / name, args.epochs, variants[name][2])
                  for name in args.models.split(",")}
        rows = [(name, how, score(ckpt, canvases["test"], 0 if how == "whole" else "auto", args.overlap, args.whole))
                for name, ckpt in models.items() for how in ("whole", "sliced")]
    print(f"\n{'model':<14}{'predict':<9}{'mAP':>7}{'mAP@0.5':>9}{'AR@100':>8}{'s/canvas':>10}")
    for name, how, m in rows:
        print(f"{name:<14}{how:<9}{m['map']:>7.3f}{m['map_50']:>9.3f}{m['mar_100']:>8.3f}{m['seconds']:>10.2f}")


if __name__ == "__main__":
    main()
