"""Copies of one photo by content: flipped, rotated, resized, re-encoded; across splits and within folds.
Real photos: scikit-learn's and matplotlib's sample images, and RBC."""
import json
from pathlib import Path

import matplotlib
import pytest
import sklearn.datasets
from PIL import Image, ImageEnhance

from detector import config
from detector.data.coco import load_coco
from detector.data.copies import copy_pairs, fingerprints, framed_copies
from detector.data.folds import make_folds, photo_groups
from detector.data.splits import load_splits, load_test
from detector.errors import DatasetError
from tests.helpers import run_cli

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"
CHINA, FLOWER = PHOTOS / "china.jpg", PHOTOS / "flower.jpg"
HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
SIM = config.DataConfig().copy_similarity


def _copies_of_china(folder: Path) -> list[Path]:
    china = Image.open(CHINA)
    made = {"rotated.jpg": china.transpose(Image.Transpose.ROTATE_90).resize((213, 320)),  # and shrunk
            "flipped.png": china.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            "brighter.jpg": ImageEnhance.Brightness(china).enhance(1.3)}
    for name, image in made.items():
        image.save(folder / name, quality=60)
    return [folder / name for name in made]


def test_flipped_rotated_resized_and_reencoded_photos_are_copies_and_other_photos_are_not(tmp_path):
    rotated, flipped, brighter = _copies_of_china(tmp_path)
    originals = fingerprints([CHINA, FLOWER, HOPPER])
    found = {(p.a, p.b): p for p in copy_pairs(originals, fingerprints([rotated, flipped, brighter]), SIM)}
    assert set(found) == {(0, 0), (0, 1), (0, 2)}  # each copy is china's, none is the flower's or Hopper's
    assert found[0, 0].view == "rotated 90 degrees counterclockwise" and found[0, 0].similarity > 0.95
    assert found[0, 1].view == "flipped left-right" and found[0, 1].similarity > 0.95
    assert found[0, 2].view == "as is" and found[0, 2].similarity > 0.85
    distinct = copy_pairs(originals, None, 0.0)  # every pair, with its similarity
    assert len(distinct) == 3 and max(p.similarity for p in distinct) < 0.3


def _split(folder: Path, images: list[tuple[Path, str]], rbc: Path) -> Path:
    """A COCO file of RBC images (source file, name in `folder`) with their boxes, the images copied or
    transformed as named: `flip:` flips left-right, `rot:` rotates 90 degrees and brightens by 30%."""
    doc = json.loads((rbc / "train" / "_annotations.coco.json").read_text())
    by_name = {im["file_name"]: im for im in doc["images"]}
    out = {"images": [], "annotations": [], "categories": doc["categories"]}
    for source, name in images:
        kind, _, target = name.rpartition(":")
        image = Image.open(source)
        image = {"flip": lambda i: i.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                 "rot": lambda i: ImageEnhance.Brightness(i.transpose(Image.Transpose.ROTATE_90)).enhance(1.3),
                 }.get(kind, lambda i: i)(image)
        image.save(folder / target, quality=90)
        record = {**by_name[source.name], "id": len(out["images"]), "file_name": target}
        out["images"].append(record)
        out["annotations"] += [{**a, "id": len(out["annotations"]) + k, "image_id": record["id"]}  # boxes as they were
                               for k, a in enumerate(a for a in doc["annotations"]
                                                     if a["image_id"] == by_name[source.name]["id"])]
    path = folder / f"{folder.name}.json"
    path.write_text(json.dumps(out))
    return path


def test_a_test_split_holding_a_rotated_training_photo_is_refused_and_a_val_copy_is_a_warning(rbc, tmp_path):
    train_files = sorted((rbc / "train").glob("image-1*_png.rf.*.jpg"))[:6]
    other = sorted((rbc / "train").glob("image-5*_png.rf.*.jpg"))[:4]
    paths = {}
    for name, images in (("train", [(p, p.name) for p in train_files]),
                         ("val", [(other[0], "val0.jpg"), (train_files[2], "flip:renamed.jpg")]),
                         ("test", [(other[3], "test0.jpg"), (train_files[4], "rot:photo_0042.jpg")])):
        (tmp_path / name).mkdir()
        paths[name] = _split(tmp_path / name, images, rbc)
    cfg = config.load(None, [f"data.{k}.annotations={v}" for k, v in paths.items()])
    logged = []
    train, val = load_splits(cfg, log=logged.append)
    [warning] = logged
    assert "data.val" in warning and "renamed.jpg is " in warning and train_files[2].name in warning
    assert "flipped left-right" in warning and "check-data" in warning
    with pytest.raises(DatasetError, match=r"data.test .* holds 1 copies of data.train photos.*"
                                           r"photo_0042.jpg is .*rotated 90 degrees counterclockwise"):
        load_test(cfg, train, val)
    lenient = config.with_values(cfg, {"data.test_copy_error": 1.0}, source="test")
    assert load_test(lenient, train, val, log=logged.append) is not None  # the user's way out: a warning
    assert "data.test" in logged[-1] and "photo_0042.jpg" in logged[-1]

    shown = run_cli("check-data", str(paths["train"]), str(paths["val"]), str(paths["test"]))
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "shared across files (2)" in shown.stdout and "usable together: NO" in shown.stdout
    report = json.loads(run_cli("check-data", str(paths["train"]), str(paths["test"]), "--json").stdout)
    [shared] = report["shared"]
    assert shared["image"].endswith("photo_0042.jpg") and shared["copy_of"].endswith(train_files[4].name)


def test_copies_of_one_photo_under_unrelated_names_share_a_fold(rbc, tmp_path):
    index = load_coco(rbc / "train" / "_annotations.coco.json")
    groups = photo_groups(index, "roboflow", SIM)
    assert groups.joined_by_content == [("image-49", "image-8")]  # RBC's own: one photo, two source names
    assert len(set(groups.keys)) == 69
    folds = make_folds(index, n_folds=5, strategy="auto", similarity=SIM, seed=0)
    names = {r.id: r.file_name for r in index.images}
    fold_of = {names[i].split("_png")[0]: k for k, ids in enumerate(folds) for i in ids}
    assert fold_of["image-49"] == fold_of["image-8"]

    sources = sorted((rbc / "train").glob("image-2*_png.rf.*.jpg"))[:12:3]  # 4 distinct photos
    path = _split(tmp_path, [(p, f"shot_{i}.jpg") for i, p in enumerate(sources)] +
                  [(sources[0], "rot:shot_9.jpg"), (sources[1], "flip:other.jpg")], rbc)
    small = load_coco(path)
    keys = photo_groups(small, "roboflow", SIM).keys
    assert keys[4] == keys[0] and keys[5] == keys[1] and len(set(keys)) == 4
    for fold in make_folds(small, n_folds=2, strategy="auto", similarity=SIM, seed=0):
        files = {r.file_name for r in small.images if r.id in fold}
        assert ("shot_0.jpg" in files) == ("shot_9.jpg" in files) and ("shot_1.jpg" in files) == ("other.jpg" in files)


CARDS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cards" / "test"


def _framed(source: Path, frame: str, out: Path) -> Path:
    """`source` (shrunk to 320 px) letterboxed between black bars, or above a white footer with a watermark."""
    from PIL import ImageDraw

    photo = Image.open(source).convert("RGB")
    photo.thumbnail((320, 320))
    w, h = photo.size
    if frame == "bars":
        canvas = Image.new("RGB", (w, 2 * h), (0, 0, 0))
        canvas.paste(photo, (0, h // 2))
    else:
        canvas = Image.new("RGB", (w, h + h // 3), (255, 255, 255))
        canvas.paste(photo, (0, 0))
        ImageDraw.Draw(canvas).text((8, h + h // 8), "(c) STOCK PHOTO WATERMARK  www.example.com", fill=(90, 90, 90))
    canvas.save(out, quality=90)
    return out


def test_distinct_photos_in_one_frame_stay_apart_and_true_copies_are_still_found(tmp_path):
    from PIL import ImageDraw

    cards = sorted(p for p in CARDS.iterdir() if p.suffix.lower() == ".jpg")[:40:10]  # one table, other cards
    photos = [CHINA, FLOWER, HOPPER, *cards]
    for frame in ("bars", "footer"):  # each distinct photo in the same frame: one "photo" before
        framed = [_framed(p, frame, tmp_path / f"{frame}{k}.jpg") for k, p in enumerate(photos)]
        assert copy_pairs(fingerprints(framed), None, SIM), frame  # alike as whole images: the frame dominates
        assert framed_copies(copy_pairs(fingerprints(framed), None, SIM), framed, framed, SIM) == [], frame
    china = Image.open(CHINA).convert("RGB")
    w, h = china.size
    meme = china.copy()
    ImageDraw.Draw(meme).text((20, 20), "WHEN THE CODE WORKS ON THE FIRST TRY", fill=(255, 255, 255))
    made = {"recrop.jpg": china.crop((w // 20, h // 20, w - w // 20, h - h // 20)), "meme.jpg": meme}
    for name, image in made.items():
        image.save(tmp_path / name, quality=50)
    copies = [tmp_path / "recrop.jpg", tmp_path / "meme.jpg", *_copies_of_china(tmp_path)]
    found = framed_copies(copy_pairs(fingerprints([CHINA]), fingerprints(copies), SIM), [CHINA], copies, SIM)
    assert sorted(p.b for p in found) == [0, 1, 2, 3, 4]  # a re-crop, a meme, rotated, flipped, brightened
    framed = [_framed(CHINA, "bars", tmp_path / "china_bars.jpg"), tmp_path / "china_bars_again.jpg"]
    Image.open(framed[0]).save(framed[1], quality=40)  # one framed photo re-encoded: still a copy
    assert [(p.a, p.b) for p in framed_copies(copy_pairs(fingerprints(framed), None, SIM), framed, framed, SIM)
            ] == [(0, 1)]
