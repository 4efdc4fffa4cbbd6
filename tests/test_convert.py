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
           r"broken.xml: not a readable Pascal VOC XML file")


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
    _fails(args, capsys, r"b.txt: line 2 \('3 0.5 0.5 0.1 0.1'\): class 3 is not one of the 2 class ids")
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


def test_image_names_that_leave_the_dataset_are_refused_and_windows_separators_are_read(images, tmp_path, capsys):
    secret = tmp_path / "secret.png"  # S1: outside the dataset's folder
    shutil.copy(images / "a.png", secret)
    xml = images.parent / "voc"
    xml.mkdir()
    for name in ("../secret.png", str(secret)):
        (xml / "a.xml").write_text(_voc(name, BOXES["a.png"]))
        _fails(["convert", str(xml), "--from", "voc", "--images-dir", str(images), "--out", str(tmp_path / "v.json"),
                "--force"], capsys, r"a.xml: image name .* (leads out of the dataset|is empty or absolute)")
    ann = images / "ann"
    ann.mkdir()
    doc = {"imagePath": "..\\a.png", "imageWidth": 100, "imageHeight": 80, "imageData": None,  # Windows LabelMe
           "shapes": [{"label": "cat", "shape_type": "rectangle", "points": [[10, 20], [50, 60]]}]}
    (ann / "a.json").write_text(json.dumps(doc))
    assert main(["convert", str(images), "--from", "labelme", "--out", str(tmp_path / "l.json")]) == 0
    (ann / "a.json").write_text(json.dumps({**doc, "imagePath": "..\\..\\secret.png"}))
    _fails(["convert", str(images), "--from", "labelme", "--out", str(tmp_path / "l.json"), "--force"], capsys,
           "leads out of the dataset's folder")


def test_labelme_polygons_and_circles_become_boxes_and_other_shapes_are_counted(images, tmp_path, capsys):
    shapes = [{"label": "cat", "shape_type": "polygon", "points": [[10, 30], [50, 20], [30, 60]]},
              {"label": "dog", "shape_type": "circle", "points": [[50, 40], [60, 40]]},
              {"label": "cat", "shape_type": "line", "points": [[0, 0], [5, 5]]},
              {"label": "cat", "shape_type": "point", "points": [[7, 7]]}]
    (images / "a.json").write_text(json.dumps({"imagePath": "a.png", "imageWidth": 100, "imageHeight": 80,
                                               "shapes": shapes}))
    out = tmp_path / "l.json"
    capsys.readouterr()
    assert main(["convert", str(images), "--from", "labelme", "--out", str(out)]) == 0  # W4
    assert _boxes_of(out)["a.png"] == [("cat", (10.0, 20.0, 50.0, 60.0)), ("dog", (40.0, 30.0, 60.0, 50.0))]
    assert "2 LabelMe shape(s) that are not regions were left out (1 line, 1 point)" in capsys.readouterr().err
    (images / "a.json").write_text(json.dumps([shapes]))  # C9: a list, not a LabelMe object
    _fails(["convert", str(images), "--from", "labelme", "--out", str(out), "--force"], capsys, "not a LabelMe file")
    (images / "a.json").write_text("[" * 100000 + "]" * 100000)  # C14: deeper than Python's recursion
    _fails(["convert", str(images), "--from", "labelme", "--out", str(out), "--force"], capsys,
           "not a readable LabelMe JSON file")


def test_cvat_and_voc_files_with_bad_sizes_boxes_twice_listed_images_or_tracks_are_named(images, tmp_path, capsys):
    cvat = tmp_path / "annotations.xml"
    out = tmp_path / "c.json"
    args = ["convert", str(cvat), "--from", "cvat", "--images-dir", str(images), "--out", str(out), "--force"]
    twice = ('<image id="0" name="a.png" width="100" height="80"><box label="cat" xtl="10" ytl="20" xbr="50" ybr="60"/>'
             '</image><image id="1" name="a.png" width="100" height="80"><polygon label="dog" points="30,5;90,5;60,45"/>'
             '<polyline label="dog" points="1,1;2,2"/></image>')
    cvat.write_text(f"<annotations>{twice}</annotations>")
    capsys.readouterr()
    assert main(args) == 0  # W5: one image with both entries' boxes
    assert _boxes_of(out) == {"a.png": [("cat", (10.0, 20.0, 50.0, 60.0)), ("dog", (30.0, 5.0, 90.0, 45.0))]}
    err = capsys.readouterr().err
    assert "1 image(s) listed twice" in err and "1 polyline" in err
    for bad, pattern in (('width="0" height="80"', "is not two positive whole numbers"),
                         ('width="100" height="80"><box label="cat" xtl="50" ytl="20" xbr="10" ybr="60"/',
                          "inside out"),
                         ('width="100" height="80"><box label="cat" xtl="nan" ytl="20" xbr="10" ybr="60"/',
                          "not a number")):  # C5: globox's AssertionError before
        cvat.write_text(f'<annotations><image id="0" name="a.png" {bad}></image></annotations>')
        _fails(args, capsys, pattern)
    cvat.write_text('<annotations><track id="0" label="cat"><box frame="0" xtl="1" ytl="1" xbr="5" ybr="5"/></track>'
                    '</annotations>')
    _fails(args, capsys, "a CVAT video export")
    xml = tmp_path / "voc"
    xml.mkdir()
    (xml / "a.xml").write_text(_voc("a.png", [("cat", (10, 20, 10, 60))]))
    _fails(["convert", str(xml), "--from", "voc", "--images-dir", str(images), "--out", str(out), "--force"], capsys,
           r"a.xml: <object> 1: box 'cat' .* no area")


def test_yolo_segments_bom_names_sparse_ids_and_unreadable_files(images, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_bytes("\ufeffcat\ndog\n".encode())  # W8: Windows Notepad's byte-order mark
    (labels / "a.txt").write_text("0 0.1 0.25 0.5 0.25 0.3 0.75\n1 0.5 0.5 0.2 0.25\n")  # W3: a segment, a box
    out = tmp_path / "y.json"
    args = ["convert", str(labels), "--from", "yolo", "--images-dir", str(images), "--out", str(out), "--force"]
    assert main(args) == 0
    assert _boxes_of(out)["a.png"] == [("cat", (10.0, 20.0, 50.0, 60.0)), ("dog", (40.0, 30.0, 60.0, 50.0))]
    (labels / "classes.txt").unlink()
    names = tmp_path / "data.yaml"
    names.write_text("names: {0: cat, 5: dog}\n")  # sparse ids, as Ultralytics allows
    (labels / "a.txt").write_text("5 0.5 0.5 0.2 0.25\n")
    assert main([*args, "--names", str(names)]) == 0
    assert _boxes_of(out)["a.png"] == [("dog", (40.0, 30.0, 60.0, 50.0))]
    for text in ("names: [cat", "- cat\n- dog\n", "names: !!python/name:os.system\n", "names: {0: cat, x: dog}\n"):
        names.write_text(text)  # C8
        _fails([*args, "--names", str(names)], capsys, "data.yaml: (not readable YAML|no 'names' list)")
    names.write_text("names: [cat, dog]\n")
    (labels / "a.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\xff\n")  # C7
    _fails([*args, "--names", str(names)], capsys, "a.txt: not a readable UTF-8 label file")
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n")
    (images / "b.png").write_bytes(b"not an image")  # C6
    _fails([*args, "--names", str(names)], capsys, "b.png: cannot decode image")


def test_yolo_and_open_images_read_photos_as_displayed_and_refuse_ambiguous_ids(images, tmp_path, capsys):
    from PIL import Image as PILImage

    turned = PILImage.new("RGB", (100, 80), (90, 90, 90))
    exif = turned.getexif()
    exif[0x0112] = 6  # a phone photo stored sideways: shown 80 wide, 100 high
    turned.save(images / "a.jpg", exif=exif)
    (images / "a.png").unlink()
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    out = tmp_path / "y.json"
    assert main(["convert", str(labels), "--from", "yolo", "--images-dir", str(images), "--out", str(out)]) == 0
    assert _boxes_of(out)["a.jpg"] == [("cat", (20.0, 25.0, 60.0, 75.0))]  # fractions of 80 x 100
    (images / "sub").mkdir()
    shutil.copy(images / "b.png", images / "sub" / "b.png")  # W6: one ImageID, two files
    rows = "ImageID,LabelName,XMin,XMax,YMin,YMax,Confidence\nb,cat,0.1,0.5,0.1,0.5,1\nb,cat,0.6,0.9,0.6,0.9,0.00\n"
    (tmp_path / "boxes.csv").write_text(rows)
    oi = ["convert", str(tmp_path / "boxes.csv"), "--from", "openimages", "--images-dir", str(images), "--out",
          str(tmp_path / "oi.json")]
    _fails(oi, capsys, r"image 'b' is in 2 places")
    shutil.rmtree(images / "sub")
    assert main(oi) == 0
    assert len(json.loads((tmp_path / "oi.json").read_text())["annotations"]) == 1  # W7: Confidence 0.00 skipped


def test_coco_to_yolo_keeps_images_of_one_name_in_two_folders_apart(tmp_path):
    root = tmp_path / "data"
    for cam, box in (("cam1", [10, 10, 20, 20]), ("cam2", [50, 40, 20, 20])):
        (root / cam).mkdir(parents=True)
        Image.fromarray(np.full((80, 100, 3), 90, np.uint8)).save(root / cam / "0001.jpg")
    doc = {"images": [{"id": k, "file_name": f"cam{k}/0001.jpg", "width": 100, "height": 80} for k in (1, 2)],
           "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": b, "area": 400, "iscrowd": 0}
                           for k, b in ((1, [10, 10, 20, 20]), (2, [50, 40, 20, 20]))],
           "categories": [{"id": 1, "name": "cat"}]}
    (root / "coco.json").write_text(json.dumps(doc))
    assert main(["convert", str(root / "coco.json"), "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "y")]) == 0
    assert (tmp_path / "y" / "cam1" / "0001.txt").read_text() != (tmp_path / "y" / "cam2" / "0001.txt").read_text()  # W2
