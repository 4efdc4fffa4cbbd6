"""How well `detector audit-labels` finds label errors: inject known ones into a copy of RBC's train split,
run cv on the copy, audit it, and score the audit's ranking against what was injected.

Errors injected (each in a seeded 5% of the boxes, no box twice): a dropped box (kind `missing`: the
audit should propose adding it back), a swapped class (`class`), a box shifted by half its size (`loose`:
the model still finds the object, off the label). Also injected: as many spurious boxes, each the size of
a random real box, at random places (`unconfirmed`; on RBC's dense smears some land on cells). An audit issue finds an injected error when it is of the same kind and its box
overlaps the injected one (IoU >= 0.5 with the original box for missing, loose and class; the spurious box
itself for unconfirmed). Prints, per kind, how many were injected, and precision and recall of the audit's
issues of that kind among its first K (K = 2 x injected) and among all of them.

    python bench/label_audit.py                       # configs/quickstart.yaml's recipe, 2 folds (about 7 minutes)
    python bench/label_audit.py --set train.epochs=2
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from detector import config
from detector.boxes import box_iou, xywh_to_xyxy
from detector.training.cv import run_cv
from detector.analysis.label_audit import KINDS, audit_run

ROOT = Path(__file__).resolve().parents[1]
SHARE = 0.05


def inject(raw: dict, seed: int = 0) -> tuple[dict, list[dict]]:
    """A copy of a COCO dict with errors injected, and the list of them (kind, image_id, bbox)."""
    rng = np.random.default_rng(seed)
    anns = raw["annotations"]
    n = int(len(anns) * SHARE)
    order = rng.permutation(len(anns))
    drop, swap, shift = (set(order[i * n:(i + 1) * n].tolist()) for i in range(3))
    cats = [c["id"] for c in raw["categories"] if any(a["category_id"] == c["id"] for a in anns)]
    injected, kept = [], []
    for i, a in enumerate(anns):
        a = dict(a)
        if i in drop:
            injected.append({"kind": "missing", "image_id": a["image_id"], "bbox": a["bbox"]})
            continue
        if i in swap:
            a["category_id"] = int(rng.choice([c for c in cats if c != a["category_id"]]))
            injected.append({"kind": "class", "image_id": a["image_id"], "bbox": a["bbox"]})
        if i in shift:
            x, y, w, h = a["bbox"]
            injected.append({"kind": "loose", "image_id": a["image_id"], "bbox": [x, y, w, h]})
            a["bbox"] = [x + w / 2, y + h / 2, w, h]
        kept.append(a)
    images = {im["id"]: im for im in raw["images"]}
    next_id = max(a["id"] for a in anns) + 1
    for image_id in rng.choice(sorted(images), n).tolist():  # an image may get several
        im = images[image_id]
        w, h = anns[int(rng.integers(len(anns)))]["bbox"][2:]  # the size of a real box: it looks like a label
        x, y = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h)
        kept.append({"id": next_id, "image_id": image_id, "category_id": int(cats[0]), "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0})
        injected.append({"kind": "unconfirmed", "image_id": image_id, "bbox": [x, y, w, h]})
        next_id += 1
    return {**raw, "annotations": kept}, injected


def found(issue, error) -> bool:
    if issue.kind != error["kind"] or issue.image_id != error["image_id"]:
        return False
    box = issue.suggestion.get("add", {}).get("bbox") if issue.kind == "missing" else issue.bbox
    box = issue.suggestion.get("bbox", box) if issue.kind == "loose" else box
    return float(box_iou(xywh_to_xyxy([box]), xywh_to_xyxy([error["bbox"]]))[0, 0]) >= 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    train = ROOT / "examples" / "rbc" / "train"
    raw = json.loads((train / "_annotations.coco.json").read_text())
    noisy, injected = inject(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noisy.json"
        path.write_text(json.dumps(noisy))
        cfg = config.load(args.config, [f"data.train.annotations={path}", f"data.train.images={train}",
                                        "cv.folds=2", "refit.strategy=folds", *args.overrides])
        run_cv(cfg, Path(tmp) / "run", progress=False, refit=False, log=lambda s: None)
        _, issues = audit_run(Path(tmp) / "run")
    print(f"{len(noisy['annotations'])} boxes in {len(noisy['images'])} images, {len(injected)} errors injected; "
          f"{len(issues)} issues found")
    print(f"{'kind':<12} {'injected':>8} {'issues':>7} {'P@2n':>6} {'R@2n':>6} {'P all':>6} {'R all':>6}")
    for kind in KINDS:
        errors = [e for e in injected if e["kind"] == kind]
        mine = [i for i in issues if i.kind == kind]
        top = mine[:2 * len(errors)]
        row = [kind, str(len(errors)), str(len(mine))]
        for chosen in (top, mine):
            hits = sum(any(found(i, e) for e in errors) for i in chosen)
            recalled = sum(any(found(i, e) for i in chosen) for e in errors)
            row += [f"{hits / len(chosen):.2f}" if chosen else "-", f"{recalled / len(errors):.2f}" if errors else "-"]
        print(f"{row[0]:<12} {row[1]:>8} {row[2]:>7} {row[3]:>6} {row[4]:>6} {row[5]:>6} {row[6]:>6}")


if __name__ == "__main__":
    main()
