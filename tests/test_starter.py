"""`detector init`: a starting config written from the data, that loads and trains without edits."""
import json

import pytest

from detector import config
from detector.errors import DatasetError, DetectorError
from detector.starter import find_split, plan_config, write
from tests.helpers import run_cli


def test_init_on_a_roboflow_export_finds_its_splits_and_explains_each_choice(rbc, tmp_path):
    out = tmp_path / "rbc.yaml"
    starter = plan_config(rbc / "train" / "_annotations.coco.json", out)
    write(starter, out, rbc / "train" / "_annotations.coco.json")
    cfg = config.load(out)
    assert cfg.data.val.annotations.endswith("valid/_annotations.coco.json")  # found beside train/
    assert cfg.data.test.annotations.endswith("test/_annotations.coco.json")
    assert cfg.data.image_size == 416  # the images' size
    assert cfg.model.anchors == "kmeans"  # cells fit k-means anchors far better than the defaults
    assert cfg.train.epochs == 12 and cfg.cv.folds == 3  # from 210 training images
    assert cfg.model.pretrained == "packaged" and cfg.data.augment.vflip == 0.0  # the photo recipe
    text = out.read_text()
    for key in ("image_size", "anchors", "epochs", "folds"):  # each data-dependent choice says why
        line = next(i for i, t in enumerate(text.splitlines()) if t.strip().startswith(f"{key}:"))
        assert text.splitlines()[line - 1].strip().startswith("#"), key
    assert "4947 boxes: rbc 4725, wbc 222" in text  # what check-data found
    assert "210 images are copies of 69 photos" in text  # image-49 and image-8 are one photo
    with pytest.raises(DetectorError, match="exists"):
        write(starter, out, rbc / "train" / "_annotations.coco.json")


def test_init_without_a_validation_split_carves_one_keeping_copies_together(rbc, tmp_path):
    source = json.loads((rbc / "train" / "_annotations.coco.json").read_text())
    alone = tmp_path / "export" / "all.json"  # no valid/ beside it
    alone.parent.mkdir()
    alone.write_text(json.dumps(source))
    assert find_split(alone, "val") is None
    out = tmp_path / "mine.yaml"
    starter = plan_config(alone, out, images_dir=rbc / "train")
    write(starter, out, alone)
    cfg = config.load(out)
    train = json.loads((tmp_path / "mine.train.json").read_text())
    val = json.loads((tmp_path / "mine.val.json").read_text())
    assert len(train["images"]) + len(val["images"]) == 210 and 30 <= len(val["images"]) <= 54
    stem = lambda name: name.split("_png.rf.")[0]
    assert not {stem(i["file_name"]) for i in train["images"]} & {stem(i["file_name"]) for i in val["images"]}
    assert cfg.data.train.images_dir.resolve() == (rbc / "train").resolve()  # images stay where they are
    assert "split off" in out.read_text()


def test_init_refuses_data_it_cannot_train_on(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="cannot train on it"):
        plan_config(bad, tmp_path / "x.yaml")


def test_init_on_too_few_photos_to_carve_says_what_init_can_do(tmp_path):
    from tests.test_outputs import _coco

    (tmp_path / "data").mkdir()
    source = _coco(tmp_path / "data" / "three.json", 3)
    done = run_cli("init", str(source), "--out", str(tmp_path / "t.yaml"))
    assert done.returncode == 2 and "pass --val" in done.stderr and "cv.folds" not in done.stderr, done.stderr
