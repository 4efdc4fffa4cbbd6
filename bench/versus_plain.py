"""What the main job buys, side by side on the same split: RBC train/ -> the untouched test/.

(a) the plain torchvision loop a user would write (bench/plain_loop.py: no detector code; the packaged
    tf_efficientnet_lite0 weights, 128-channel FPN, default anchors, no augmentation, 3 epochs at 384 px);
(b) one `detector train` with the generic recipe (configs/finetune.yaml) on the same images, epochs and size;
(c) the README's main job: `detector study configs/quickstart.yaml`, whose published ensemble is refit on
    all of train/ and tuned on valid/.
Every model's test predictions are scored by one evaluator (`detector evaluate --predictions`, equal to
pycocotools), and each line gives the wall-clock seconds of its training and prediction.

    python bench/versus_plain.py                  # about 35 minutes on 2 CPU cores
    python bench/versus_plain.py --skip plain     # (b) and (c) only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RBC = ROOT / "examples" / "rbc"
TRAIN, VAL, TEST = (str(RBC / s / "_annotations.coco.json") for s in ("train", "valid", "test"))


def run(cmd: list[str]) -> float:
    started = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def score(predictions: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "detector.cli", "evaluate", "--predictions", str(predictions), TEST,
                          "--json"], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    m = json.loads(out)
    return {k: m[k] for k in ("map_50", "map", "map_75")}


def plain(tmp: Path, epochs: int, size: int) -> dict[str, float]:
    preds = tmp / "plain.json"
    seconds = run([sys.executable, str(ROOT / "bench" / "plain_loop.py"), TRAIN, TEST, "--epochs", str(epochs),
                   "--size", str(size), "--predictions", str(preds)])
    return {**score(preds), "seconds": seconds}


def single(tmp: Path, epochs: int, size: int) -> dict[str, float]:
    out = tmp / "single"
    seconds = run([sys.executable, "-m", "detector.cli", "train", str(ROOT / "configs" / "finetune.yaml"),
                   "--out", str(out), "--quiet", "--set", f"data.train.annotations={TRAIN}",
                   "--set", f"data.val.annotations={VAL}", "--set", f"train.epochs={epochs}",
                   "--set", f"data.image_size={size}"])
    seconds += run([sys.executable, "-m", "detector.cli", "predict", str(out / "best.pt"), "--gt", TEST,
                    "--out", str(tmp / "single_preds"), "--quiet"])
    return {**score(tmp / "single_preds" / "predictions.json"), "seconds": seconds}


def main_job(tmp: Path) -> tuple[dict[str, float], list[dict[str, float]]]:
    seconds = run([sys.executable, "-m", "detector.cli", "study", str(ROOT / "configs" / "quickstart.yaml"),
                   "--name", "quickstart", "--studies-dir", str(tmp), "--quiet"])
    best = tmp / "quickstart" / "best"
    seconds += run([sys.executable, "-m", "detector.cli", "predict", str(best), "--gt", TEST,
                    "--out", str(tmp / "ensemble_preds"), "--quiet"])
    members = []
    for i, m in enumerate(json.loads((best / "ensemble.json").read_text())["members"]):
        run([sys.executable, "-m", "detector.cli", "predict", str(best / m["file"]), "--gt", TEST,
             "--out", str(tmp / f"member_{i}"), "--quiet"])
        members.append(score(tmp / f"member_{i}" / "predictions.json"))
    return {**score(tmp / "ensemble_preds" / "predictions.json"), "seconds": seconds}, members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of (a) and (b)")
    parser.add_argument("--size", type=int, default=384, help="image size of (a) and (b)")
    parser.add_argument("--skip", action="append", default=[], choices=("plain", "single", "study"))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "plain" not in args.skip:
            rows["(a) plain torchvision loop"] = plain(tmp, args.epochs, args.size)
        if "single" not in args.skip:
            rows["(b) detector train, finetune.yaml"] = single(tmp, args.epochs, args.size)
        if "study" not in args.skip:
            rows["(c) main job: published ensemble"], members = main_job(tmp)
            for i, m in enumerate(members):
                rows[f"    member {i} alone"] = m
    test = json.loads(Path(TEST).read_text())
    print(f"\nRBC test/ ({len(test['images'])} images, {len(test['annotations'])} boxes); (a) and (b): {args.epochs} epochs at {args.size} px on train/")
    print(f"{'':<36} {'mAP@0.5':>8} {'mAP':>8} {'mAP@0.75':>9} {'seconds':>8}")
    for name, r in rows.items():
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else ""
        print(f"{name:<36} {r['map_50']:>8.4f} {r['map']:>8.4f} {r['map_75']:>9.4f} {seconds:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
