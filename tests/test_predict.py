import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detector import config
from detector.checkpoint import restore_model
from detector.training.cv import run_cv
from detector.data.coco import load_coco
from detector.data.dataset import CocoDetection, collate
from detector.engine import predict
from detector.hardware import Precision
from detector.metrics import Thresholds
from detector.inference.ensemble import Ensemble
from detector.errors import DetectorError
from detector.inference.predict import OutputWriter, collect_images, ground_truth_metrics, load_ground_truth, run_predictions
from detector.layout import PredictPaths, RunPaths
from tests.helpers import run_cli
from tests.test_train import TINY


@pytest.fixture(scope="module")
def rbc_run(rbc, tmp_path_factory):
    """Three checkpoints from a brief 3-fold run on part of the RBC training split: the folds' own best models
    (refit.strategy folds), with thresholds chosen on their out-of-fold predictions."""
    train = rbc / "train" / "_annotations.coco.json"
    cfg = config.load(None, [f"data.train.annotations={train}",
                             f"data.val.annotations={rbc / 'valid' / '_annotations.coco.json'}", *TINY,
                             "data.image_size=192", "train.epochs=2", "cv.folds=3", "cv.top_k=1",
                             "refit.strategy=folds", "eval.score_threshold=0.3"])
    index = load_coco(train)
    run = tmp_path_factory.mktemp("rbc_run")
    run_cv(cfg, run, index=index.subset(r.id for r in index.images[:48]), progress=False, log=lambda s: None)
    return run




@pytest.mark.slow
def test_predict_with_ground_truth_round_trips_through_evaluate(rbc, rbc_run, tmp_path):
    gt_path = rbc / "test" / "_annotations.coco.json"
    out = tmp_path / "preds"
    done = run_cli("predict", str(RunPaths(rbc_run).top_models), str(rbc / "test"), "--out", str(out), "--gt",
               str(gt_path), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "ensemble" in done.stdout and "member 2" in done.stdout and "wbc" in done.stdout
    assert "confusion matrix at the operating point" in done.stdout and "map_small" in done.stdout
    confusion = json.loads(PredictPaths(out).confusion.read_text())
    assert confusion["classes"] == ["rbc", "wbc", "background"] and PredictPaths(out).confusion_plot.stat().st_size
    errors = json.loads(PredictPaths(out).errors.read_text())
    worst = sorted(PredictPaths(out).worst.glob("*.png"))
    assert "where the errors come from" in done.stdout and 0 < len(worst) <= 8 and worst[0].name.startswith("00_")
    assert sum(errors["counts"].values()) > 0 and all(g >= -1e-9 for g in errors["gains"].values())
    ensemble = Ensemble.load(RunPaths(rbc_run).top_models)
    point = json.loads(RunPaths(rbc_run).operating_point.read_text())  # out-of-fold, not eval.score_threshold
    assert len(ensemble.members) == 3 and ensemble.thresholds.default == point["score_threshold"] != 0.3
    assert point["images"] == 48 and "wbc" in point["metrics"]["per_class"]
    gt = load_ground_truth(gt_path, ensemble)
    run = run_predictions(ensemble, [r.path for r in gt.images], gt=gt, with_members=True)
    rows = dict(ground_truth_metrics(run, gt, Thresholds(0.3, {}), members=3))
    evaluated = run_cli("evaluate", "--predictions", str(PredictPaths(out).predictions), str(gt_path), "--score-threshold",
                    "0.3", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads(evaluated.stdout)
    for key in ("map", "map_50", "precision", "recall", "f1"):
        assert again[key] == pytest.approx(rows["ensemble"].metrics.value(key), abs=1e-4), key
    assert rows["member 0"].metrics.map != rows["ensemble"].metrics.map
    boxes = {c["category_id"]: c["num_gt"] for c in again["per_class"].values()}
    assert [sum(row) for row in again["confusion"]["counts"][:2]] == [boxes[1], boxes[2]]  # each box once
    results = json.loads(PredictPaths(out).predictions.read_text())
    assert {r["category_id"] for r in results} <= {1, 2}  # the dataset's own ids (0 is the placeholder)
    rows_csv = PredictPaths(out).table.read_text().splitlines()
    assert rows_csv[0] == "file,class,score,x1,y1,x2,y2"
    lowest = min([point["score_threshold"], *point["class_thresholds"].values()])  # the run's own, per class too
    assert all(float(line.split(",")[2]) >= round(lowest, 4) - 1e-4 for line in rows_csv[1:])  # (4 decimals)


@pytest.mark.slow
def test_audit_labels_of_a_cv_run_writes_issues_a_fixed_file_and_drawings(rbc, rbc_run):
    done = run_cli("audit-labels", str(rbc_run), "--top", "5")
    assert done.returncode == 0, done.stderr
    issues = json.loads(RunPaths(rbc_run).label_issues.read_text())
    assert issues and {i["kind"] for i in issues} <= {"missing", "class", "unconfirmed", "loose"}
    assert [i["confidence"] for i in issues] == sorted((i["confidence"] for i in issues), reverse=True)
    fixed = load_coco(RunPaths(rbc_run).label_fixes, rbc / "train")  # what check-data and training accept
    assert len(fixed.images) == 210 and len(list(RunPaths(rbc_run).label_drawings.glob("*.png"))) == min(5, len(issues))
    assert "suspected label issues in 48 training images" in done.stdout  # the out-of-fold images only
    again = run_cli("audit-labels", str(rbc_run), "--top", "2")  # W9: the first audit's 5 drawings go
    assert again.returncode == 0, again.stderr
    assert len(list(RunPaths(rbc_run).label_drawings.glob("*.png"))) == min(2, len(issues))
    fixes = RunPaths(rbc_run).label_fixes
    fixes.write_text(fixes.read_text().replace('"iscrowd": 0', '"iscrowd": 0 ', 1))  # D5: the user's review
    reviewed = fixes.read_bytes()
    refused = run_cli("audit-labels", str(rbc_run))
    assert refused.returncode == 2 and "edited since audit-labels wrote it" in refused.stderr
    assert fixes.read_bytes() == reviewed
    from detector.runs import hold_run

    with hold_run(rbc_run):  # W1: as a `detector cv` still training in the folder holds it
        busy = run_cli("audit-labels", str(rbc_run), "--force")
    assert busy.returncode == 2 and "another detector process is running" in busy.stderr, busy.stderr
    elsewhere = run_cli("audit-labels", str(rbc_run), "--out", str(rbc_run.parent / "audit"), "--top", "1")
    assert elsewhere.returncode == 0 and (rbc_run.parent / "audit" / "label_fixes.coco.json").is_file()
    assert fixes.read_bytes() == reviewed


@pytest.mark.slow
def test_an_ensemble_of_one_equals_the_models_own_predictions(rbc, rbc_run):
    checkpoint = rbc_run / json.loads(RunPaths(rbc_run).top_models.read_text())[0]["path"]
    index = load_coco(rbc / "test" / "_annotations.coco.json")
    ours = Ensemble.load(checkpoint).predict([r.path for r in index.images], batch_size=4)
    restored = restore_model(checkpoint)
    loader = DataLoader(CocoDetection(index, size=restored.image_size), batch_size=4,
                        collate_fn=collate)
    direct = predict(restored.model, loader, device=torch.device("cpu"), precision=Precision("cpu", None))
    assert len(ours) == len(direct) == len(index.images)
    for a, b in zip(ours, direct):
        np.testing.assert_allclose(a.boxes, b["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(a.scores, b["scores"].numpy(), atol=1e-5)
        assert a.labels.tolist() == b["labels"].tolist()


@pytest.mark.slow
def test_unusual_and_broken_files(rbc, rbc_run, tmp_path):
    src = np.array(Image.open(next((rbc / "test").glob("*.jpg"))).convert("RGB"))
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(src).save(d / "plain.jpg")
    Image.fromarray(src[..., 0]).save(d / "gray.png")
    Image.fromarray(np.dstack([src, np.full(src.shape[:2], 200, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(src[..., 1].astype(np.uint16) * 257).save(d / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    Image.fromarray(src[:, :300]).save(d / "rotated.jpg", exif=exif)
    Image.fromarray(np.tile(src, (5, 7, 1))).save(d / "large.jpg")  # 2080 x 2912
    Image.fromarray(src[:24, :16]).save(d / "tiny.png")
    (d / "notes.jpg").write_text("not an image")
    (d / "truncated.jpg").write_bytes((d / "plain.jpg").read_bytes()[:2000])
    Image.new("L", (14000, 14000)).save(d / "huge.png")  # past PIL's decompression-bomb limit
    (d / "sub").mkdir()
    Image.fromarray(src[:, ::-1]).save(d / "sub" / "plain.jpg")  # a second plain.jpg: its own drawing
    out = tmp_path / "out"
    done = run_cli("predict", str(rbc_run), str(d), "--out", str(out), "--draw", "--tta", "hflip",
               "--score-threshold", "0.05", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "skipped 2 unreadable" in done.stderr and "notes.jpg" in done.stderr
    assert "warning: " in done.stderr and "truncated.jpg: truncated" in done.stderr  # predicted as viewers show it
    assert "huge.png: too large to decode safely" in done.stderr
    records = json.loads(PredictPaths(out).images.read_text())
    assert sorted(r["drawing"] for r in records if Path(r["file_name"]).name == "plain.jpg") == \
        ["drawn/plain.png", "drawn/plain_2.png"]
    images = {Path(i["file_name"]).name: i for i in records}
    assert set(images) == {"plain.jpg", "gray.png", "rgba.png", "deep16.png", "rotated.jpg", "large.jpg", "tiny.png",
                           "truncated.jpg"}
    assert (images["rotated.jpg"]["width"], images["rotated.jpg"]["height"]) == (416, 300)  # EXIF applied
    for r in json.loads(PredictPaths(out).predictions.read_text()):
        im = next(i for i in records if i["id"] == r["image_id"])
        x, y, w, h = r["bbox"]
        assert x >= 0 and y >= 0 and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
    assert len(list((out / "drawn").glob("*.png"))) == 9
    assert run_cli("predict", str(rbc_run), str(tmp_path / "nothing*.jpg"), "--out", str(out)).returncode == 2


@pytest.mark.slow
def test_an_interrupted_predict_keeps_the_images_it_finished_and_the_same_job_resumes(rbc, rbc_run, tmp_path):
    files = collect_images([rbc / "test"])
    ensemble = Ensemble.load(rbc_run)
    job = {"models": ensemble.identity(), "images": [str(f) for f in files]}
    writer = OutputWriter(tmp_path / "out", Thresholds(0.3, {}), draw=True, job=job)

    def add_then_stop(p, image_id):
        writer.add(p, image_id)
        if len(writer.images) == 3:
            raise KeyboardInterrupt  # Ctrl-C, or a crash, after the third image

    with pytest.raises(KeyboardInterrupt):
        run_predictions(ensemble, files, batch_size=1, on_image=add_then_stop)
    lines = PredictPaths(tmp_path / "out").partial.read_text().splitlines()
    assert len(lines) == 4 and [json.loads(line)["image"]["id"] for line in lines[1:]] == [1, 2, 3]
    rows = PredictPaths(tmp_path / "out").table.read_text().splitlines()
    assert {row.split(",")[0] for row in rows[1:]} <= {str(f) for f in files[:3]} and len(rows) > 1
    with PredictPaths(tmp_path / "out").partial.open("a") as f:
        f.write('{"image": {"id": 4, "fi')  # torn by a kill -9 mid-write

    again = OutputWriter(tmp_path / "out", Thresholds(0.3, {}), draw=True, job=job)  # the same command again
    assert sorted(again.done) == [str(f) for f in files[:3]]
    predicted = []
    run = run_predictions(ensemble, files, batch_size=1, done=again.done,
                          on_image=lambda p, i: (predicted.append(i), again.add(p, i)))
    again.close()
    assert predicted == list(range(4, len(files) + 1))  # only the images the first run did not finish
    whole = OutputWriter(tmp_path / "whole", Thresholds(0.3, {}), draw=True, job=job)
    run_predictions(ensemble, files, batch_size=1, on_image=whole.add)  # batches of one: the same arithmetic
    whole.close()
    for name in ("predictions.json", "predictions.csv", "images.json"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert len(list((tmp_path / "out" / "drawn").glob("*.png"))) == len(files) == len(run.predictions) == 9
    assert not PredictPaths(tmp_path / "out").partial.exists()
    with pytest.raises(DetectorError, match="holds the outputs of another predict job"):
        OutputWriter(tmp_path / "whole", Thresholds(0.5, {}), job=job)  # another threshold: another job
    other = OutputWriter(tmp_path / "whole", Thresholds(0.5, {}), job=job, force=True)  # started afresh
    assert not other.done and not PredictPaths(tmp_path / "whole").predictions.exists()


@pytest.mark.slow
def test_hflip_tta_changes_the_fusion_and_collect_images(rbc, rbc_run):
    files = collect_images([str(rbc / "test" / "*.jpg")])
    assert len(files) == 9
    ensemble = Ensemble.load(rbc_run)
    plain = ensemble.predict(files[:2])
    tta = ensemble.predict(files[:2], tta=True)
    assert [len(p.scores) for p in plain] != [len(p.scores) for p in tta] or not np.allclose(
        plain[0].scores[:5], tta[0].scores[:5])
    assert all(p.names and set(p.names) <= {"rbc", "wbc"} for p in tta)
    # geometry: TTA of the mirrored photo passes the same two images, so its boxes mirrored back must be
    # TTA's boxes of the photo (a flip-back that forgot to mirror, or mirrored y, would move every box)
    from detector.data.images import read_image

    one = Ensemble(ensemble.members[:1])
    image = read_image(files[0])
    width = image.shape[1]
    a = one.predict([image], tta=True, score_threshold=0.3)[0]
    b = one.predict([np.ascontiguousarray(image[:, ::-1])], tta=True, score_threshold=0.3)[0]
    mirrored = np.stack([width - b.boxes[:, 2], b.boxes[:, 1], width - b.boxes[:, 0], b.boxes[:, 3]], axis=1)
    assert len(a.boxes) == len(b.boxes) > 3
    # each box has its twin within a pixel, both ways (sorting by corner breaks ties on 1e-5 differences)
    gap = np.abs(mirrored[:, None, :] - a.boxes[None, :, :]).max(axis=2)
    assert gap.min(axis=0).max() <= 1.0 and gap.min(axis=1).max() <= 1.0


@pytest.mark.slow
def test_exported_models_match_the_eager_model_on_real_images(rbc, rbc_run, tmp_path):
    import shutil
    import warnings

    import onnxruntime

    from detector.data.images import read_image
    from detector.deploy.export import deployed, export_models, read_labels

    top = json.loads(RunPaths(rbc_run).top_models.read_text())
    checkpoint = rbc_run / top[0]["path"]
    eager = deployed(restore_model(checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation, the exporter's tracer warnings
        [ts] = export_models(checkpoint, "torchscript", tmp_path / "model.pt")
        [ox] = export_models(checkpoint, "onnx", tmp_path / "model.onnx")
    scripted = torch.jit.load(str(ts))
    session = onnxruntime.InferenceSession(str(ox), providers=["CPUExecutionProvider"])
    photo = read_image(sorted((rbc / "test").glob("*.jpg"))[0])
    images = [photo, np.ascontiguousarray(photo[:300, :250]), np.ascontiguousarray(photo[::2, :])]  # any size
    ensemble = Ensemble.from_checkpoints([checkpoint])
    for image in images:
        with torch.no_grad():
            boxes, scores, labels = eager(torch.from_numpy(image))
            s_boxes, s_scores, s_labels = scripted(torch.from_numpy(image))
        o_boxes, o_scores, o_labels = session.run(None, {"image": image})
        assert len(boxes) > 10
        np.testing.assert_allclose(s_boxes.numpy(), boxes.numpy(), atol=1e-3)
        np.testing.assert_allclose(o_boxes, boxes.numpy(), atol=1e-3)
        np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-4)
        assert (o_labels == labels.numpy()).all() and (s_labels == labels).all()
        # the same detector as `detector predict`'s, with the same resize: its confident boxes, exactly
        [ours] = ensemble.predict([image], score_threshold=0.5)
        keep = scores.numpy() >= 0.5
        assert int(keep.sum()) == len(ours.boxes)
        np.testing.assert_allclose(boxes.numpy()[keep], ours.boxes, atol=1e-3)
    assert read_labels(ox)["labels"]["2"]["name"] == "wbc"
    best = tmp_path / "best"  # a study's best/ folder: every member, with the ensemble's settings beside them
    best.mkdir()
    for i, m in enumerate(top[:2]):
        shutil.copy(rbc_run / m["path"], best / f"model_{i}.pt")
    (best / "ensemble.json").write_text(json.dumps({
        "members": [{"file": "model_0.pt"}, {"file": "model_1.pt"}], "ensemble": {"iou_thr": 0.6},
        "score_threshold": 0.4, "class_thresholds": {"2": 0.2}, "label_map": {}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = export_models(best, "onnx", tmp_path / "deploy")
    assert [p.name for p in written] == ["model_0.onnx", "model_1.onnx", "ensemble.json"]
    meta = json.loads((tmp_path / "deploy" / "ensemble.json").read_text())
    # an ensemble.json of the form before the operating point was stored once is read, and written anew
    assert meta["operating_point"]["class_thresholds"] == {"2": 0.2}
    assert [m["file"] for m in meta["members"]] == ["model_0.onnx", "model_1.onnx"]
    # the exported folder predicts and scores as the best/ folder it came from (WBF of the ONNX files)
    files = sorted((rbc / "test").glob("*.jpg"))[:4]
    for ours, theirs in zip(Ensemble.load(best).predict(files, score_threshold=0.1),
                            Ensemble.load(tmp_path / "deploy").predict(files, score_threshold=0.1)):
        assert abs(len(ours.boxes) - len(theirs.boxes)) <= 1 and len(ours.boxes) > 5  # one may cross 0.1
        for box, score in zip(ours.boxes[ours.scores >= 0.11], ours.scores[ours.scores >= 0.11]):
            assert ((np.abs(theirs.boxes - box).max(1) <= 1.0) & (np.abs(theirs.scores - score) <= 1e-3)).any()
    gt = rbc / "test" / "_annotations.coco.json"
    done = run_cli("evaluate", str(tmp_path / "deploy"), str(gt), "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["class_thresholds"] == {"2": 0.2}  # the folder's own operating point


def _prediction(source):
    from detector.inference.ensemble import ImagePrediction

    return ImagePrediction(str(source), 60, 40, np.array([[1, 2, 30, 20]], np.float32), np.array([0.9], np.float32),
                           np.array([1]), ["cell"], [1])


def test_a_new_predict_job_never_mixes_with_another_jobs_outputs(tmp_path):
    from detector.errors import DetectorError

    out = tmp_path / "out"
    first = OutputWriter(out, Thresholds(0.3, {}), draw=False, job={"images": "a"})
    for i in (1, 2, 3):
        first.add(_prediction(f"a{i}.png"), i)
    first.close()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DetectorError, match=r"out: holds the outputs of another predict job \(predictions.json, "
                                            r"predictions.csv, images.json\); use another --out, or --force"):
        OutputWriter(out, Thresholds(0.3, {}), job={"images": "b"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing truncated
    OutputWriter(out, Thresholds(0.3, {}), job={"images": "a"}).close()  # the same job again: allowed
    second = OutputWriter(out, Thresholds(0.3, {}), job={"images": "b"}, force=True)
    second.add(_prediction("b1.png"), 1)  # ... and killed here
    assert sorted(p.name for p in out.iterdir()) == ["job.json", "predictions.csv", "predictions.partial.jsonl"]
    assert "a1.png" not in PredictPaths(out).table.read_text()


def test_force_unlinks_a_linked_output_and_keeps_the_file_it_points_to(tmp_path):
    out = tmp_path / "out"
    first = OutputWriter(out, Thresholds(0.3, {}), draw=False, job={"images": "a"})
    first.add(_prediction("a1.png"), 1)
    first.close()
    mine = tmp_path / "mine.csv"  # C13: a link among the outputs; --force must not write through it
    mine.write_text("my own table")
    PredictPaths(out).table.unlink()
    PredictPaths(out).table.symlink_to(mine)
    second = OutputWriter(out, Thresholds(0.3, {}), job={"images": "b"}, force=True)
    second.add(_prediction("b1.png"), 1)
    second.close()
    assert mine.read_text() == "my own table" and not PredictPaths(out).table.is_symlink()
    assert "b1.png" in PredictPaths(out).table.read_text()


def test_one_file_under_two_spellings_is_predicted_once(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "y.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a" / "x.jpg")
    found = collect_images([tmp_path / "a" / ".." / "a" / "x.jpg", tmp_path / "a", tmp_path / "link.jpg"])
    assert found == [tmp_path / "a" / ".." / "a" / "x.jpg", tmp_path / "a" / "y.jpg"]


def test_ground_truth_matches_by_name_only_when_it_is_the_same_image(tiny_coco, tmp_path):
    import shutil

    from detector.errors import DatasetError
    from detector.inference.predict import _image_ids

    gt = load_coco(tiny_coco())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(gt.images[0].path, elsewhere / "im0.png")  # the same image, moved: matched by name, and said
    assert _image_ids([elsewhere / "im0.png", gt.images[1].path], gt) == ([1, 2], 1)
    shutil.copy(gt.images[2].path, elsewhere / "im1.png")  # another image under a --gt name
    with pytest.raises(DatasetError, match=r"im1.png: not an image of .*\(the entry of that name is another file"):
        _image_ids([elsewhere / "im1.png"], gt)
    with pytest.raises(DatasetError, match="are the same image of"):
        _image_ids([gt.images[0].path, elsewhere / "im0.png"], gt)


def test_an_images_detections_do_not_depend_on_the_images_batched_with_it(untrained_checkpoint):
    # a batch pads every image to its largest one; a tall neighbour would pad a wide image's bottom edge
    # (and change its boxes there) unless images are batched by padded shape, as an exported model sees them
    restored = restore_model(untrained_checkpoint)
    rng = np.random.default_rng(0)
    wide, tall = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(60, 128, 3), (128, 50, 3)])
    ensemble = Ensemble([restored])
    [alone] = ensemble.predict([wide])
    together = ensemble.predict([wide, tall], batch_size=2)[0]
    assert len(alone.boxes) > 0
    np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-4)
    np.testing.assert_allclose(together.scores, alone.scores, atol=1e-6)


def test_a_read_only_or_flipped_image_resizes_like_a_fresh_copy_without_a_warning():
    import warnings

    from detector.data.resize import fit_array

    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    read_only = image.copy()
    read_only.flags.writeable = False  # as a tile of a memory-mapped or decoded-once image arrives
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps memory it may not write
        for view, same_as in ((read_only, image), (image[:, ::-1], np.ascontiguousarray(image[:, ::-1]))):
            got, ratio = fit_array(view, 20)
            want, _ = fit_array(same_as, 20)
            assert got.shape == (3, 20, 15) and torch.equal(got, want)
    assert ratio.tolist() == [2.0, 2.0, 2.0, 2.0]
