import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data.coco import load_coco
from detector.data.records import LabelMap
from detector.data.dataset import CocoDetection
from detector.data.images import read_image
from detector.errors import DatasetError
from tests.helpers import run_cli


def test_rbc_boxes_labels_and_placeholder(rbc):
    path = rbc / "train" / "_annotations.coco.json"
    raw = json.loads(path.read_text())
    index = load_coco(path)
    assert len(index.images) == 210
    assert index.label_map == LabelMap((1, 2), ("rbc", "wbc"))  # placeholder id 0 has no label
    assert LabelMap.from_dict(index.label_map.to_dict()) == index.label_map
    for cid in (1, 2):
        assert index.label_map.category_id(index.label_map.label(cid)) == cid
    by_image = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ds = CocoDetection(index)
    for i in (0, 17, 209):
        rec = index.images[i]
        anns = by_image.get(rec.id, [])
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32)
        image, target = ds[i]
        assert image.shape == (3, 416, 416) and str(image.dtype) == "torch.float32" and image.max() <= 1.0
        np.testing.assert_allclose(target["boxes"].numpy(), expected.reshape(-1, 4), atol=1e-4)
        assert target["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1, 2 -> labels 1, 2
        assert int(target["image_id"]) == rec.id
    assert sum(len(r.boxes) for r in index.images) == 4947


def test_placeholder_kept_when_configured(rbc):
    index = load_coco(rbc / "valid" / "_annotations.coco.json", drop_placeholder_categories=False)
    assert index.label_map.category_ids == (0, 1, 2)


def test_crowd_excluded_and_negatives_kept(tiny_coco):
    def crowd(d):
        d["annotations"].append({"id": 3, "image_id": 1, "category_id": 2, "bbox": [30, 5, 10, 10], "iscrowd": 1})
    index = load_coco(tiny_coco(crowd))
    assert len(index.images) == 3  # image 3 has no boxes and stays as a negative
    assert len(index.images[0].boxes) == 1 and len(index.images[0].annotations) == 2
    assert len(load_coco(tiny_coco(), keep_empty=False).images) == 2
    _, target = CocoDetection(index)[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


BAD_CASES = {
    "missing key": (lambda d: d["images"][0].pop("width"), r"images\[0\]: missing key\(s\) width"),
    "duplicate image id": (lambda d: d["images"][1].update(id=1), r"images\[1\]\.id: duplicate id 1"),
    "duplicate annotation id": (lambda d: d["annotations"][1].update(id=1), r"duplicate id 1"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=99), r"unknown image id 99"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=7), r"unknown category id 7"),
    "missing file": (lambda d: d["images"][0].update(file_name="images/nope.png"), r"file not found"),
    "size mismatch": (lambda d: d["images"][0].update(width=61), r"JSON says 61x40 but the file is 60x40"),
    "zero width": (lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10]), r"width or height <= 0"),
    "nan": (lambda d: d["annotations"][0].update(bbox=[5, float("nan"), 3, 10]), r"NaN or infinite"),
    "absolute path": (lambda d: d["images"][0].update(file_name="/etc/passwd"), r"escapes the dataset folder"),
    "dot dot": (lambda d: d["images"][0].update(file_name="../x.png"), r"escapes the dataset folder"),
    "not 4 numbers": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"is not 4 numbers"),
    "outside entirely": (lambda d: d["annotations"][0].update(bbox=[100, 5, 10, 10]), r"entirely outside"),
    "list image id": (lambda d: d["annotations"][0].update(image_id=[1]), r"annotations\[0\].image_id: \[1\] is not"),
    "dict category id": (lambda d: d["annotations"][0].update(category_id={}), r"category_id: \{\} is not an integer"),
    "numeric file name": (lambda d: d["images"][0].update(file_name=7), r"images\[0\].file_name: 7 is not a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_errors(tiny_coco, case):
    mutate, pattern = BAD_CASES[case]
    path = tiny_coco(mutate)
    with pytest.raises(DatasetError, match=pattern) as info:
        load_coco(path)
    assert str(path) in str(info.value)  # names the file


def test_unreadable_and_non_json(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found"):
        load_coco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 1"):
        load_coco(bad)


def test_an_undecodable_image_is_left_out_with_a_warning_that_names_it(tiny_coco):
    path = tiny_coco()
    (tiny_coco.root / "images" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    index = load_coco(path)  # one damaged file of many no longer stops the whole dataset
    assert [r.file_name for r in index.images] == ["images/im0.png", "images/im2.png"]
    [warning] = index.file_warnings()
    assert "1 image(s) left out: they cannot be decoded (image id 2 (images/im1.png))" in warning
    for name in ("im0.png", "im2.png"):
        (tiny_coco.root / "images" / name).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="no image file can be used"):
        load_coco(path)


def test_an_over_large_image_is_a_problem_not_a_crash(tiny_coco):
    from PIL import Image

    path = tiny_coco()
    Image.new("L", (14000, 14000)).save(tiny_coco.root / "images" / "im2.png")  # 196 Mpx: PIL's bomb guard
    index = load_coco(path, raise_on_error=False)
    assert any("im2.png" in p.field and "too large to decode safely" in p.message for p in index.problems)
    assert "images/im2.png" not in [r.file_name for r in index.images]


def test_a_truncated_image_that_pil_decodes_is_used_with_a_warning(tiny_coco):
    path = tiny_coco(lambda d: d["images"][0].update(file_name="images/im0.jpg"))
    whole = tiny_coco.root / "images" / "im0.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(whole, quality=95)
    whole.write_bytes(whole.read_bytes()[:-20])  # the last 20 bytes missing: every viewer still shows it
    index = load_coco(path)
    assert len(index.images) == 3 and read_image(whole).shape == (40, 60, 3)
    assert "1 image(s) used truncated (image id 1 (images/im0.jpg))" in index.file_warnings()[0]


def test_missing_empty_and_deeply_nested_files_are_listed_by_check_data(tiny_coco, tmp_path):
    path = tiny_coco(lambda d: d["images"][0].update(file_name="images/gone.png"))
    done = run_cli("check-data", str(path))  # the copies check stopped at the missing file
    assert done.returncode == 1 and "file not found" in done.stdout and "Traceback" not in done.stderr
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    for bad, said in ((empty, "the file lists no images"), (deep, "nested deeper than any COCO file")):
        done = run_cli("check-data", str(bad))
        assert done.returncode == 1 and said in done.stdout and "Traceback" not in done.stderr, done.stderr


def test_box_outside_clipped_with_warning_or_strict_error(tiny_coco):
    path = tiny_coco(lambda d: d["annotations"][0].update(bbox=[50, 30, 20, 20]))
    index = load_coco(path)
    assert [w.field for w in index.warnings] == ["annotations id 1.bbox"]
    np.testing.assert_allclose(index.images[0].boxes, [[50, 30, 60, 40]])
    with pytest.raises(DatasetError, match="extends outside the 60x40 image.*strict_boxes=false"):
        load_coco(path, strict_boxes=True)


def test_val_split_uses_training_label_map(tiny_coco):
    path = tiny_coco(lambda d: d["categories"].__setitem__(1, {"id": 2, "name": "other"}))
    with pytest.raises(DatasetError, match="named 'other' here but 'b' in the training split"):
        load_coco(path, label_map=LabelMap((1, 2), ("a", "b")))


def test_image_modes_load_as_rgb(tmp_path):
    gray = np.tile(np.arange(50, dtype=np.uint8) * 5, (30, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 7)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    for name in ("gray.png", "rgba.png", "deep.png"):
        arr = read_image(tmp_path / name)
        assert arr.shape == (30, 50, 3) and arr.dtype == np.uint8, name
        np.testing.assert_array_equal(arr[..., 0], gray)
        np.testing.assert_array_equal(arr[..., 2], gray)


def test_sixteen_bit_images_map_by_one_rule_not_by_their_own_maximum(tmp_path):
    for name, top in (("max255.png", 255), ("max256.png", 256), ("max4095.png", 4095)):
        Image.fromarray(np.linspace(0, top, 60, dtype=np.float64).round().astype(np.uint16).reshape(6, 10)).save(
            tmp_path / name)
    a, b = read_image(tmp_path / "max255.png"), read_image(tmp_path / "max256.png")
    assert a.max() == 1 and b.max() == 1  # 255 and 256 of 65535: dark alike (it was 255 vs 1, 257x apart)
    assert read_image(tmp_path / "max4095.png", bit_depth=12).max() == 255  # a 12-bit camera's data
    with pytest.raises(DatasetError, match=r"max4095.png: pixel values 0..4095 do not fit data.bit_depth 10"):
        read_image(tmp_path / "max4095.png", bit_depth=10)
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match="float.tif: a floating-point image"):
        read_image(tmp_path / "float.tif")


def test_exif_rotation_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # stored: left half white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = read_image(tmp_path / "rot.jpg")
    assert arr.shape == (40, 20, 3)  # displayed orientation: portrait
    assert arr[:15].mean() > 200 and arr[25:].mean() < 50  # white half is now on top




@pytest.mark.slow
def test_check_data_cli(rbc, tiny_coco):
    ok = run_cli("check-data", str(rbc / "valid" / "_annotations.coco.json"), "--json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["images"] == 20 and summary["boxes"] == 470 and summary["usable"]
    assert summary["dropped_categories"] == ["RBC-WBC"]
    assert set(summary["boxes_per_class"]) == {"rbc", "wbc"}
    text = run_cli("check-data", str(rbc / "valid" / "_annotations.coco.json"))
    assert "per class:" in text.stdout and "usable: yes" in text.stdout
    bad = run_cli("check-data", str(tiny_coco(lambda d: d["annotations"][0].update(bbox=[5, 5, -1, 10]))))
    assert bad.returncode == 1 and "width or height <= 0" in bad.stdout and "Traceback" not in bad.stderr


def test_a_training_split_without_boxes_is_refused(tiny_coco):
    from detector import config
    from detector.data.splits import load_splits

    path = tiny_coco(lambda d: d.update(annotations=[]))
    cfg = config.load(None, [f"data.train.annotations={path}", f"data.val.annotations={path}"])
    with pytest.raises(DatasetError, match="the training split has no boxes, so there is nothing to learn"):
        load_splits(cfg)


def test_a_copy_of_an_image_under_another_name_is_the_same_image_in_every_split(sample, tmp_path):
    import shutil

    from detector import config
    from detector.data.splits import load_splits, load_test

    val = json.loads(sample["val"].read_text())
    copies = tmp_path / "copies"
    copies.mkdir()
    for image in val["images"]:  # data.test: data.val's images under other names
        shutil.copy(sample["val"].parent / image["file_name"], copies / f"copy_{Path(image['file_name']).name}")
        image["file_name"] = f"copy_{Path(image['file_name']).name}"
    (copies / "test.json").write_text(json.dumps(val))
    cfg = config.load(None, [f"data.train.annotations={sample['train']}", f"data.val.annotations={sample['val']}",
                             f"data.test.annotations={copies / 'test.json'}"])
    train, held_out = load_splits(cfg)
    with pytest.raises(DatasetError, match=r"data.test \(.*test.json\) shares 8 image file\(s\) with data.val: "
                                           r".*copy_.* is .* \(the same bytes\)"):
        load_test(cfg, train, held_out)
    with pytest.raises(DatasetError, match=r"data.val .* shares 8 image file\(s\) with data.train"):  # train checks too
        load_splits(config.load(None, [f"data.train.annotations={sample['annotations']}",
                                       f"data.val.annotations={copies / 'test.json'}"]))


def test_an_image_whose_short_side_vanishes_at_the_model_size_is_warned_about(tmp_path):
    from detector.data.summary import aspect_warning

    doc = {"images": [{"id": 1, "file_name": "strip.png", "width": 20000, "height": 100},
                      {"id": 2, "file_name": "photo.png", "width": 640, "height": 480}],
           "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    index = load_coco(tmp_path / "a.json", check_images=False)
    assert aspect_warning(index, 384) == (
        f"{tmp_path / 'a.json'}: 1 image(s) are so elongated that at data.image_size 384 their short side falls "
        "under 32 px (e.g. strip.png, 20000x100 -> short side 2 px); train and predict on tiles "
        "(data.augment.crop=N with ensemble.slice=auto), or raise data.image_size")
    assert aspect_warning(index.subset([2]), 384) is None
