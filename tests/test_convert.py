"""detector convert: hand-made VOC, LabelMe, CVAT and YOLO files with known boxes into COCO files that
check-data accepts, and COCO -> YOLO -> COCO round trips."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from detector.cli import main
from detector.data.coco import load_coco


BOXES = {"a.png": [("cat", (10, 20, 50, 60)), ("dog", (30, 5, 90, 45))], "b.png": [("dog", (0, 0, 40, 30))]}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in (*BOXES, "empty.png"):
        Image.fromarray(np.full((80, 100, 3), 120, np.uint8)).save(folder / name)  # 100 wide, 80 high
    return folder


def _boxes_of(coco_path, images_dir=None):
    index = load_coco(coco_path, images_dir)
    names = dict(zip(index.label_map.category_ids, index.label_map.names))
    return {r.path.name: sorted((names[int(c)], tuple(np.round(b, 3))) for c, b in zip(r.category_ids, r.boxes))
            for r in index.images}


def _expected(names=("a.png", "b.png")):
    return {n: sorted((label, tuple(float(v) for v in box)) for label, box in BOXES.get(n, [])) for n in names}


def _fails(args, capsys, pattern):
    """The command exits 2 (a data error) with `pattern` in its one-line error, without a traceback."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err, err


def _voc(name, boxes):
    objects = "".join(f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for label, (x0, y0, x1, y1) in boxes)
    return (f"<annotation><folder>images</folder><filename>{name}</filename><size><width>100</width>"
            f"<height>80</height><depth>3</depth></size>{objects}</annotation>")


def test_pascal_voc_folder_becomes_a_coco_file_with_the_same_boxes(images, tmp_path, capsys):
    xml = tmp_path / "Annotations"
    xml.mkdir()
    for name, boxes in BOXES.items():
        (xml / f"{name[:-4]}.xml").write_text(_voc(name, boxes))
    out = tmp_path / "coco" / "train.json"
    assert main(["convert", str(xml), "--from", "voc", "--images-dir", str(images), "--out", str(out)]) == 0
    assert _boxes_of(out, images) == _expected()
    assert json.loads(out.read_text())["images"][0]["file_name"] == "a.png"  # relative to the images' folder
    printed = capsys.readouterr().out
    assert "2 images (0 without boxes), 3 boxes, classes cat, dog" in printed
    assert f"detector check-data {out} --images-dir {images}" in printed  # the file is not beside the images
    (xml / "broken.xml").write_text("<annotation><filename>c.png</filename>")
    _fails(["convert", str(xml), "--from", "voc", "--images-dir", str(images), "--out", str(out), "--force"], capsys,
           r"broken.xml: cannot read it")


def test_labelme_and_cvat_files_become_coco_files_with_the_same_boxes(images, tmp_path):
    for name, boxes in BOXES.items():
        shapes = [{"label": label, "shape_type": "rectangle", "points": [[x1, y1], [x0, y0]]}  # corners in any order
                  for label, (x0, y0, x1, y1) in boxes]
        doc = {"imagePath": name, "imageWidth": 100, "imageHeight": 80, "shapes": shapes, "imageData": None}
        (images / f"{name[:-4]}.json").write_text(json.dumps(doc))
    labelme = tmp_path / "labelme.json"
    assert main(["convert", str(images), "--from", "labelme", "--out", str(labelme)]) == 0
    assert _boxes_of(labelme) == _expected()

    nodes = "".join(f'<image id="{k}" name="{name}" width="100" height="80">' + "".join(
        f'<box label="{label}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}"/>'
        for label, (x0, y0, x1, y1) in boxes) + "</image>" for k, (name, boxes) in enumerate(BOXES.items()))
    (tmp_path / "annotations.xml").write_text(f"<annotations><version>1.1</version>{nodes}</annotations>")
    cvat = tmp_path / "cvat.json"
    assert main(["convert", str(tmp_path / "annotations.xml"), "--from", "cvat", "--images-dir", str(images),
                 "--out", str(cvat)]) == 0
    assert _boxes_of(cvat) == _expected()  # beside the images' folder: images/a.png, loads as it is
    assert json.loads(cvat.read_text())["images"][0]["file_name"] == "images/a.png"


def test_coco_to_yolo_and_back_keeps_every_box_and_the_images_without_boxes(rbc, tmp_path):
    source = json.loads((rbc / "train" / "_annotations.coco.json").read_text())
    keep = source["images"][:3]
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    for im in keep:
        shutil.copy(rbc / "train" / im["file_name"], images / im["file_name"])
    ids = {im["id"] for im in keep}
    anns = [a for a in source["annotations"] if a["image_id"] in ids and a["image_id"] != keep[2]["id"]]
    coco = images / "coco.json"  # the third image keeps no box: a negative
    coco.write_text(json.dumps({**source, "images": keep, "annotations": anns}))
    labels = tmp_path / "dataset" / "labels"
    assert main(["convert", str(coco), "--from", "coco", "--to", "yolo", "--out", str(labels)]) == 0
    assert (labels / "classes.txt").read_text() == "rbc\nwbc\n"  # the placeholder category is no class
    assert (labels / f"{keep[2]['file_name'][:-4]}.txt").read_text() == ""
    back = tmp_path / "back.json"
    assert main(["convert", str(labels), "--from", "yolo", "--out", str(back)]) == 0  # images/ found beside
    before, after = load_coco(coco), load_coco(back)
    by_name = {r.path.name: r for r in after.images}
    assert len(after.images) == 3 and sum(len(r.boxes) for r in after.images) == len(anns)
    for r in before.images:
        other = by_name[r.path.name]
        assert [before.label_map.names[before.labels(r)[k] - 1] for k in range(len(r.boxes))] == \
            [after.label_map.names[after.labels(other)[k] - 1] for k in range(len(other.boxes))]
        np.testing.assert_allclose(other.boxes, r.boxes, atol=416 * 1e-6)  # 6 decimals of the image size


def test_a_bad_yolo_line_is_named_by_file_and_line(images, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\ndog\n")
    (labels / "a.txt").write_text("0 0.3 0.5 0.4 0.5\n\n1 0.6 0.3 0.6 0.5\n")
    (labels / "b.txt").write_text("0 0.2 0.2 0.4 0.4\n3 0.5 0.5 0.1 0.1\n")
    out = tmp_path / "out.json"
    args = ["convert", str(labels), "--from", "yolo", "--images-dir", str(images), "--out", str(out)]
    _fails(args, capsys, r"b.txt: line 2 \('3 0.5 0.5 0.1 0.1'\): class 3 is not in the 2")
    (labels / "b.txt").write_text("0 0.2 0.2 0.4\n")
    _fails(args, capsys, r"b.txt: line 1 .*expected 'class cx cy w h'")
    (labels / "b.txt").write_text("1 0.2 0.1875 0.4 0.375\n")
    assert main(args) == 0
    boxes = _boxes_of(out)  # out.json sits beside images/: it loads as it is
    assert boxes["b.png"] == [("dog", (0.0, 0.0, 40.0, 30.0))] and boxes["empty.png"] == []  # no file: a negative
    (labels / "classes.txt").unlink()
    _fails([*args, "--force"], capsys, "no class-names file")


def test_open_images_csv_becomes_a_coco_file_with_named_classes_and_group_boxes(images, tmp_path, capsys):
    (images / "a.png").rename(images / "000a1.png")  # Open Images IDs name the file without its extension
    (images / "b.png").rename(images / "000b2.png")
    mids = {"cat": "/m/01yrx", "dog": "/m/0bt9lr"}
    rows = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf"]
    for image_id, name in (("000a1", "a.png"), ("000b2", "b.png")):
        for label, (x0, y0, x1, y1) in BOXES[name]:
            rows.append(f"{image_id},xclick,{mids[label]},1,{x0 / 100},{x1 / 100},{y0 / 80},{y1 / 80},0,0,0")
    rows.append("000b2,xclick,/m/01yrx,1,0.5,0.9,0.5,0.9,0,0,1")  # a box around a group of cats
    boxes_csv = tmp_path / "validation-annotations-bbox.csv"
    boxes_csv.write_text("\n".join(rows) + "\n")
    (tmp_path / "oidv7-class-descriptions.csv").write_text("LabelName,DisplayName\n/m/01yrx,cat\n/m/0bt9lr,dog\n")
    out = tmp_path / "oi.json"
    args = ["convert", str(boxes_csv), "--from", "openimages", "--images-dir", str(images), "--out", str(out)]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    by_file = {im["file_name"]: im["id"] for im in doc["images"]}
    assert set(by_file) == {"images/000a1.png", "images/000b2.png"}  # empty.png is named by no row
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["image_id"] == by_file["images/000b2.png"]
    boxes = _boxes_of(out)  # crowd boxes are not training boxes
    assert boxes == {"000a1.png": _expected()["a.png"], "000b2.png": _expected()["b.png"]}
    boxes_csv.write_text("\n".join([*rows, "000a1,xclick,/m/01yrx,1,0.7,0.2,0.1,0.3,0,0,0"]) + "\n")
    _fails([*args, "--force"], capsys, r"validation-annotations-bbox.csv: line 6: the box .* XMin < XMax")
    boxes_csv.write_text("\n".join([*rows, "000zz,xclick,/m/01yrx,1,0.1,0.2,0.1,0.3,0,0,0"]) + "\n")
    _fails([*args, "--force"], capsys, r"line 6: image '000zz' is not in")
    boxes_csv.write_text("\n".join(rows) + "\n")
    (tmp_path / "oidv7-class-descriptions.csv").unlink()
    _fails([*args, "--force"], capsys, r"/m/01yrx are Open Images MIDs .* --names")
