"""What the main job buys, side by side on the same split, on microscopy (RBC) and on photos (cards):

(a) the plain torchvision loop a user would write (bench/plain_loop.py: no detector code; the packaged
    tf_efficientnet_lite0 weights, 128-channel FPN, default anchors, no augmentation, 3 epochs at 384 px);
(b) one `detector train` with the generic recipe (configs/finetune.yaml) on the same images, epochs and size;
(c) the README's main job: `detector study configs/quickstart.yaml`, whose published models are refit on
    all of the training split and chosen and tuned on the validation split; on the cards photos the same
    recipe without the microscopy flips (vertical flips and 90-degree rotations: up is up in a photo);
and each refit member of (c) alone. Every model is trained on the training split only and scored on the
untouched test split by one evaluator (`detector evaluate`, equal to pycocotools), with 95% bootstrap
intervals over the test images, and (c) is compared with the others on the same images (the paired
interval of the difference, and whether it is better, worse or within noise).

RBC: examples/rbc train/ (210) -> valid/ (20) -> test/ (9). Cards: ../shared/datasets/cards (Pascal VOC as
it came) converted by `detector convert`, a validation split carved off its train/ by `detector init` (copies
of one photo kept together), its test/ (67 photos) as the test split.

    python bench/versus_plain.py                        # both, about 80 minutes on 2 CPU cores
    python bench/versus_plain.py --dataset cards --skip plain
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RBC = ROOT / "examples" / "rbc"
CARDS = ROOT.parent / "shared" / "datasets" / "cards"
CLI = [sys.executable, "-m", "detector.cli"]
KEYS = ("map_50", "map", "map_75")
PHOTO = ["data.augment.vflip=0", "data.augment.rotate90=0"]  # quickstart.yaml's microscopy flips, off for photos


@dataclass(frozen=True)
class Split:
    """A dataset's three splits: COCO files and the folders their file names are relative to."""

    name: str
    train: str
    val: str
    test: str
    train_images: str
    val_images: str
    test_images: str
    extra: tuple[str, ...] = ()  # config overrides of the main job

    def data(self) -> list[str]:
        return [f"data.train.annotations={self.train}", f"data.train.images={self.train_images}",
                f"data.val.annotations={self.val}", f"data.val.images={self.val_images}",
                f"data.test.annotations={self.test}", f"data.test.images={self.test_images}"]


def run(cmd: list[str]) -> float:
    started = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rbc() -> Split:
    files = [str(RBC / s / "_annotations.coco.json") for s in ("train", "valid", "test")]
    return Split("RBC", *files, *(str(Path(f).parent) for f in files))


def cards(tmp: Path) -> Split:
    """convert the VOC folders, then carve a validation split off train/ with detector init."""
    out = tmp / "cards"
    out.mkdir()
    for part in ("train", "test"):
        run([*CLI, "convert", str(CARDS / part), "--from", "voc", "--out", str(out / f"{part}.json")])
    run([*CLI, "init", str(out / "train.json"), "--images-dir", str(CARDS / "train"), "--test",
         str(out / "test.json"), "--out", str(out / "cards.yaml")])
    return Split("cards", str(out / "cards.train.json"), str(out / "cards.val.json"), str(out / "test.json"),
                 str(CARDS / "train"), str(CARDS / "train"), str(CARDS / "test"), tuple(PHOTO))


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def plain(split: Split, tmp: Path, epochs: int, size: int) -> tuple[Path, float]:
    preds = tmp / "plain.json"
    seconds = run([sys.executable, str(ROOT / "bench" / "plain_loop.py"), split.train, split.test, "--epochs",
                   str(epochs), "--size", str(size), "--train-images", split.train_images, "--test-images",
                   split.test_images, "--predictions", str(preds)])
    return preds, seconds


def predict(models: Path, split: Split, out: Path) -> tuple[Path, float]:
    seconds = run([*CLI, "predict", str(models), "--gt", split.test, "--images-dir", split.test_images,
                   "--out", str(out), "--quiet"])
    return out / "predictions.json", seconds


def single(split: Split, tmp: Path, epochs: int, size: int) -> tuple[Path, float]:
    out = tmp / "single"
    seconds = run([*CLI, "train", str(ROOT / "configs" / "finetune.yaml"), "--out", str(out), "--quiet",
                   *sets([*split.data()[:4], f"train.epochs={epochs}", f"data.image_size={size}"])])
    preds, more = predict(out / "best.pt", split, tmp / "single_preds")
    return preds, seconds + more


def main_job(split: Split, tmp: Path) -> tuple[Path, float, list[Path]]:
    seconds = run([*CLI, "study", str(ROOT / "configs" / "quickstart.yaml"), "--name", "quickstart",
                   "--studies-dir", str(tmp), "--quiet", *sets([*split.data(), *split.extra])])
    best = tmp / "quickstart" / "best"
    preds, more = predict(best, split, tmp / "published_preds")
    candidates = json.loads((best / "ensemble.json").read_text())["candidates"]
    members = [predict(Path(c), split, tmp / f"member_{i}")[0] for i, c in enumerate(candidates)]
    return preds, seconds + more, members


def evaluate(split: Split, preds: Path, against: list[Path]) -> dict:
    cmd = [*CLI, "evaluate", "--predictions", str(preds), split.test, "--json"]
    for other in against:
        cmd += ["--against", str(other)]
    return json.loads(subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout)


def one_dataset(split: Split, tmp: Path, args) -> dict:
    rows: dict[str, tuple[Path, float]] = {}
    if "plain" not in args.skip:
        rows["(a) plain torchvision loop"] = plain(split, tmp, args.epochs, args.size)
    if "single" not in args.skip:
        rows["(b) detector train, finetune.yaml"] = single(split, tmp, args.epochs, args.size)
    members: list[Path] = []
    if "study" not in args.skip:
        preds, seconds, members = main_job(split, tmp)
        rows["(c) main job: published"] = (preds, seconds)
        rows.update({f"    refit member {i} alone": (p, 0.0) for i, p in enumerate(members)})
    scored = {name: {**evaluate(split, p, []), "seconds": s} for name, (p, s) in rows.items()}
    versus = {}
    if "study" not in args.skip:
        others = [(n, p) for n, (p, _) in rows.items() if not n.startswith("(c)")]
        found = evaluate(split, rows["(c) main job: published"][0], [p for _, p in others])["versus"]
        versus = {n: v for (n, _), v in zip(others, found)}
    return {"scored": scored, "versus": versus}


def print_tables(split: Split, result: dict, args) -> None:
    test = json.loads(Path(split.test).read_text())
    print(f"\n{split.name} test ({len(test['images'])} images, {len(test['annotations'])} boxes); (a) and (b): "
          f"{args.epochs} epochs at {args.size} px on the training split; [95% bootstrap interval]")
    print(f"{'':<36} " + " ".join(f"{k:>22}" for k in KEYS) + f" {'seconds':>8}")
    for name, r in result["scored"].items():
        cells = " ".join(f"{r[k]:.3f} [{r['intervals'][k][0]:.3f}, {r['intervals'][k][1]:.3f}]".rjust(22) for k in KEYS)
        seconds = f"{r['seconds']:.0f}" if r["seconds"] else ""
        print(f"{name:<36} {cells} {seconds:>8}")
    if result["versus"]:
        print("\n(c) minus each, on the same images (paired interval):")
        for name, v in result["versus"].items():
            print(f"  {name.strip():<34} " + "   ".join(
                f"{k} {v[k]['difference']:+.3f} [{v[k]['interval'][0]:+.3f}, {v[k]['interval'][1]:+.3f}] "
                f"{v[k]['verdict']}" for k in ("map", "map_50")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("rbc", "cards", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of (a) and (b)")
    parser.add_argument("--size", type=int, default=384, help="image size of (a) and (b)")
    parser.add_argument("--skip", action="append", default=[], choices=("plain", "single", "study"))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in (("rbc", "cards") if args.dataset == "both" else (args.dataset,)):
            (tmp / name).mkdir()
            split = rbc() if name == "rbc" else cards(tmp / name)
            results[name] = one_dataset(split, tmp / name, args)
            print_tables(split, results[name], args)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
