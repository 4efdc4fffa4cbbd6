"""How well content fingerprints (detector/data/copies.py) find copies of one photo, at data.copy_similarity.

1. RBC, the original Roboflow export (../shared/datasets/rbc when present: its test split still holds
   image-80, which the shipped examples/rbc dropped): within train/, the photo groups found by content
   alone against the 70 source photos the Roboflow names give (adjusted Rand index, pairs found), and the
   photos the three splits share by name and by content. Roboflow's copies here had each box augmented on
   its own, so they differ far more than a re-export does; the threshold sweep shows the margin.
2. Everyday photos (scikit-learn's and matplotlib's samples, plus scikit-image's data when installed):
   each turned into copies (rotated and shrunk, flipped, re-encoded at JPEG quality 50, 30% brighter,
   squashed to 3/4 height, 5% cropped: not promised), against distinct photos and a 3 x 3 grid of crops
   of every photo (neighbouring crops of one scene are hard negatives; mirror-symmetric ones are copies).
3. Frames: the same photos between one set of letterbox bars, and above one white footer with a
   watermark: distinct photos must stay apart (whole-image fingerprints join them; framed_copies compares
   what lies inside the shared frame), and each framed photo's re-encoded copy must still be found.
4. Speed: a fingerprint (JPEG decoded at a reduced scale) against a full decode of the same files.

    python bench/copies.py
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import matplotlib
import numpy as np
import sklearn.datasets
from PIL import Image, ImageEnhance
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from detector.config import DataConfig  # noqa: E402
from detector.data.coco import load_coco  # noqa: E402
from detector.data.copies import components, copy_pairs, fingerprint, fingerprints, framed_copies  # noqa: E402
from detector.data.folds import group_key  # noqa: E402
from detector.data.images import read_image  # noqa: E402

SIM = DataConfig().copy_similarity
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def rbc_root() -> Path:
    shared = ROOT.parent / "shared" / "datasets" / "rbc"
    return shared if (shared / "test" / "_annotations.coco.json").is_file() else ROOT / "examples" / "rbc"


def rbc() -> None:
    root = rbc_root()
    splits = {s: load_coco(root / s / "_annotations.coco.json") for s in ("train", "valid", "test")}
    train = splits["train"]
    names = [group_key(r, "roboflow") for r in train.images]
    prints = fingerprints(r.path for r in train.images)
    pairs = copy_pairs(prints, None, min(SWEEP))
    same_name = {(i, j) for i, j in combinations(range(len(names)), 2) if names[i] == names[j]}
    print(f"RBC {root}: train/ {len(train.images)} images of {len(set(names))} source photos by name")
    print(f"{'similarity':>10} {'groups':>7} {'ARI vs names':>13} {'name pairs found':>17} {'other pairs':>12}"
          f"{'shared across splits':>22}")
    for t in SWEEP:
        kept = [(p.a, p.b) for p in pairs if p.similarity >= t]
        labels = components(len(names), kept)
        found = sum(1 for p in kept if p in same_name)
        across = sum(len(copy_pairs(fingerprints(r.path for r in splits[b].images),
                                    fingerprints(r.path for r in splits[a].images), t))
                     for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")))
        mark = "  <- data.copy_similarity" if t == SIM else ""
        print(f"{t:>10.2f} {len(set(labels)):>7} {adjusted_rand_score(names, labels):>13.3f} "
              f"{found:>8} of {len(same_name):<6} {len(kept) - found:>12} {across:>22}{mark}")
    other = sorted({tuple(sorted((names[p.a], names[p.b]))) for p in pairs
                    if p.similarity >= SIM and names[p.a] != names[p.b]})
    print(f"  at {SIM}, pairs of different names that content joins: {other or 'none'}")
    name_sets = {s: {group_key(r, 'roboflow') for r in ix.images} for s, ix in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        by_name = len(name_sets[a] & name_sets[b])
        content = copy_pairs(fingerprints(r.path for r in splits[a].images),
                             fingerprints(r.path for r in splits[b].images), SIM)
        shown = [f"{splits[b].images[p.b].file_name[:12]}.. is {splits[a].images[p.a].file_name[:12]}.. "
                 f"{p.view} ({p.similarity:.2f})" for p in content]
        print(f"  {a} / {b}: {by_name} source names shared; by content {len(content)}: {shown or ''}")


def everyday_photos() -> list[tuple[str, Image.Image]]:
    files = [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    try:
        import skimage
        data = Path(skimage.__file__).parent / "data"
        files += sorted(p for p in data.iterdir() if p.suffix in (".png", ".jpg") and "chessboard" not in p.name)
    except ImportError:
        print("(scikit-image is not installed: 3 photos only; `pip install scikit-image` adds its 25)")
    photos = []
    for f in files:
        image = Image.open(f).convert("RGB")
        if min(image.size) >= 64:
            photos.append((f.name, image))
    return photos


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


COPIES = {
    "rotated 90 and shrunk": lambda i: i.transpose(Image.Transpose.ROTATE_90).resize((i.height // 2, i.width // 2)),
    "flipped": lambda i: i.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "JPEG quality 50": lambda i: _jpeg(i, 50),
    "30% brighter": lambda i: ImageEnhance.Brightness(i).enhance(1.3),
    "3/4 height": lambda i: i.resize((i.width, i.height * 3 // 4)),
    "5% cropped (not promised)": lambda i: i.crop((i.width // 40, i.height // 40, i.width - i.width // 40,
                                                   i.height - i.height // 40)),
}


def _prints(images: list[Image.Image], folder: Path) -> np.ndarray:
    paths = []
    for k, image in enumerate(images):
        paths.append(folder / f"{k}.png")
        image.save(paths[-1])
    return fingerprints(paths)


def photos(folder: Path) -> None:
    named = everyday_photos()
    originals = _prints([i for _, i in named], folder)
    print(f"\nEveryday photos ({len(named)}): similarity of each copy to its original (lowest over the photos)")
    for what, make in COPIES.items():
        copies = _prints([make(i) for _, i in named], folder)
        sims = [max((p.similarity for p in copy_pairs(originals[k:k + 1], copies[k:k + 1], -1.0)), default=0)
                for k in range(len(named))]
        print(f"  {what:<28} min {min(sims):.3f}  copies found at {SIM}: {sum(s >= SIM for s in sims)}/{len(sims)}")
    distinct = copy_pairs(originals, None, -1.0)
    top = sorted(distinct, key=lambda p: -p.similarity)[:3]
    print(f"  distinct photos, {len(distinct)} pairs: at or above {SIM}: "
          f"{sum(p.similarity >= SIM for p in distinct)}; highest: " +
          ", ".join(f"{named[p.a][0]} / {named[p.b][0]} {p.similarity:.2f}" for p in top))
    _crop_pairs(named, (3,), "")
    real = [(n, i) for n, i in named if n not in SYNTHETIC]
    _crop_pairs(real, (3, 4), f"{len(real)} real photos only (the stereo pair counted as one photo), ")


SYNTHETIC = {"color.png", "clock_motion.png", "phantom.png", "logo.png", "text.png", "page.png"}


def _crop_pairs(named: list[tuple[str, Image.Image]], grids: tuple[int, ...], what: str) -> None:
    """Crops on g x g grids of every photo: pairs of crops of one photo and of different photos."""
    crops, owner = [], []
    left = next((k for k, (n, _) in enumerate(named) if n == "motorcycle_left.png"), None)
    for k, (name, image) in enumerate(named):
        for g in grids:
            w, h = image.width // g, image.height // g
            crops += [image.crop((x * w, y * h, x * w + w, y * h + h)) for x in range(g) for y in range(g)]
            owner += [left if name == "motorcycle_right.png" and left is not None else k] * g * g
    with tempfile.TemporaryDirectory() as tmp:
        pairs = copy_pairs(_prints(crops, Path(tmp)), None, -1.0)
    by_kind = defaultdict(list)
    for p in pairs:
        by_kind["crops of one photo" if owner[p.a] == owner[p.b] else "crops of different photos"].append(p.similarity)
    for kind, sims in by_kind.items():
        sims = np.array(sims)
        counts = ", ".join(f"{int((sims >= t).sum())} at {t}" for t in (SIM, 0.8, 0.9))
        print(f"  {what}{kind} ({'x'.join(map(str, grids))} grids): {len(sims)} pairs, {counts} "
              f"({np.mean(sims >= SIM):.2%} at {SIM}; 99th percentile {np.percentile(sims, 99):.2f})")


def _framed(image: Image.Image, frame: str) -> Image.Image:
    """`image` (shrunk to 320 px) between black letterbox bars, or above a white footer with a watermark."""
    from PIL import ImageDraw

    photo = image.convert("RGB")
    photo.thumbnail((320, 320))
    w, h = photo.size
    canvas = Image.new("RGB", (w, 2 * h) if frame == "bars" else (w, h + h // 3),
                       (0, 0, 0) if frame == "bars" else (255, 255, 255))
    canvas.paste(photo, (0, h // 2) if frame == "bars" else (0, 0))
    if frame == "footer":
        ImageDraw.Draw(canvas).text((8, h + h // 8), "(c) STOCK PHOTO WATERMARK  www.example.com", fill=(90, 90, 90))
    return canvas


def frames(folder: Path) -> None:
    """Distinct photos in one frame (the same letterbox bars, the same watermarked footer) must stay apart,
    and a framed photo's re-encoded copy must still be found: whole-image likeness and framed_copies."""
    named = everyday_photos()
    print(f"\nDistinct photos in one frame ({len(named)} photos, {len(named) * (len(named) - 1) // 2} pairs), at {SIM}:")
    for frame in ("bars", "footer"):
        framed = [_framed(i, frame) for _, i in named]
        copies = [_jpeg(i, 40) for i in framed]
        paths = []
        for k, image in enumerate([*framed, *copies]):
            paths.append(folder / f"{frame}{k}.png")
            image.save(paths[-1])
        prints = fingerprints(paths)
        n = len(framed)
        whole = [p for p in copy_pairs(prints, None, SIM)]
        kept = framed_copies(whole, paths, paths, SIM)
        wrong = lambda pairs: sum(p.b - p.a != n for p in pairs)  # noqa: E731  (a framed photo and its copy: n apart)
        right = lambda pairs: sum(p.b - p.a == n for p in pairs)  # noqa: E731
        print(f"  {frame:<7} distinct photos joined: whole images {wrong(whole)}, framed_copies {wrong(kept)}; "
              f"re-encoded copies found: whole images {right(whole)}/{n}, framed_copies {right(kept)}/{n}")


def speed() -> None:
    files = sorted((rbc_root() / "train").glob("*.jpg"))
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    for name, paths in (("RBC 416 x 416 JPEG", files), ("grace_hopper 512 x 600 JPEG", [photo] * 100)):
        start = time.perf_counter()
        for p in paths:
            fingerprint(p)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        for p in paths:
            read_image(p)
        full = time.perf_counter() - start
        print(f"\n{name}: fingerprint {1000 * ours / len(paths):.2f} ms per image, a full decode alone "
              f"{1000 * full / len(paths):.2f} ms (ratio {ours / full:.2f})")


if __name__ == "__main__":
    rbc()
    with tempfile.TemporaryDirectory() as tmp:
        photos(Path(tmp))
        frames(Path(tmp))
    speed()
