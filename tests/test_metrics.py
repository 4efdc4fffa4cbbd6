import contextlib
import io
import json

import numpy as np
import pytest

from detector.data.coco import load_coco
from detector.metrics import evaluate_detections, match_counts, pr_curves
from tests.helpers import pycocotools_stats


def jittered_predictions(gt, seed=0):
    """Real RBC boxes moved by a few pixels, 10% with the wrong class, plus extra low-score boxes."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    results = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy, dw, dh = rng.normal(0, 3, 4)
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice([c for c in cats if c != a["category_id"]]))
        results.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                        "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)]})
        if rng.random() < 0.4:
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "score": float(rng.random() * 0.3), "bbox": [x + 25, y + 25, w, h]})
    return results


@pytest.fixture(scope="module")
def rbc_valid(rbc):
    return load_coco(rbc / "valid" / "_annotations.coco.json", check_images=False)


def test_ground_truth_as_predictions_scores_one(rbc_valid):
    gt = rbc_valid.to_coco()
    results = [{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 1.0} for a in gt["annotations"]]
    m = evaluate_detections(gt, results)
    for key in ("map", "map_50", "map_75", "precision", "recall", "f1", "score"):
        assert m[key] == pytest.approx(1.0), key
    assert m["per_class"]["wbc"]["ap"] == pytest.approx(1.0)
    curves = pr_curves(gt, results)
    assert set(curves) == {1, 2} and all((p == 1.0).all() for _, p in curves.values())


def test_equals_pycocotools_on_jittered_rbc(rbc_valid):
    gt = rbc_valid.to_coco()
    results = jittered_predictions(gt)
    ours = evaluate_detections(gt, results)
    ref = pycocotools_stats(gt, results)
    assert 0.2 < ours["map"] < 0.9  # a non-trivial case
    for key, i in (("map", 0), ("map_50", 1), ("map_75", 2)):
        assert abs(ours[key] - ref.stats[i]) < 1e-6, key
    precision = ref.eval["precision"]
    for k, cid in enumerate(ref.params.catIds):
        name = {1: "rbc", 2: "wbc"}[cid]
        p = precision[:, :, k, 0, -1]
        assert abs(ours["per_class"][name]["ap"] - p[p > -1].mean()) < 1e-6


def test_annotation_id_zero_is_not_lost(rbc_valid):
    gt = rbc_valid.to_coco()
    assert min(a["id"] for a in gt["annotations"]) == 1  # the file starts at 0; evaluation renumbers


def test_cli_evaluate_predictions_matches_pycocotools(rbc, rbc_valid, tmp_path):
    from detector.cli import main

    gt = rbc_valid.to_coco()
    results = jittered_predictions(gt, seed=3)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["evaluate", "--predictions", str(path), str(rbc / "valid" / "_annotations.coco.json"), "--json"])
    assert code == 0
    m = json.loads(out.getvalue())
    assert {"map", "map_50", "map_75", "precision", "recall", "f1", "per_class"} <= m.keys()
    ref = pycocotools_stats(gt, results)
    assert abs(m["map"] - ref.stats[0]) < 1e-6 and abs(m["map_50"] - ref.stats[1]) < 1e-6


def test_predictions_of_another_label_map_are_refused_not_scored_zero(rbc, rbc_valid, tmp_path):
    from detector.errors import DatasetError
    from detector.evaluate import evaluate_results_file

    results = [{**r, "category_id": r["category_id"] + 10} for r in jittered_predictions(rbc_valid.to_coco(), 3)]
    path = tmp_path / "shifted.json"
    path.write_text(json.dumps(results))
    with pytest.raises(DatasetError, match=r"results\[0\].category_id: 1[12] is not a category of .* \(1, 2\)"):
        evaluate_results_file(path, rbc / "valid" / "_annotations.coco.json")


def test_images_with_more_boxes_than_detections_are_warned_about(rbc_valid):
    from detector.data.summary import crowding_warning

    assert crowding_warning(rbc_valid, 100) is None  # RBC: up to about 40 cells per image
    warning = crowding_warning(rbc_valid, 10)
    assert "image(s) hold more than 10 boxes" in warning and "raise model.max_detections" in warning


def _gt(boxes, crowd=()):
    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (b, c) in enumerate(boxes)]
    anns += [{"id": 100 + i, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 1}
             for i, (b, c) in enumerate(crowd)]
    return {"images": [{"id": 1, "width": 100, "height": 100}], "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _pred(box, cat, score):
    return {"image_id": 1, "category_id": cat, "bbox": box, "score": score}


def test_f1_matching_hand_made_cases():
    gt = _gt([([10, 10, 20, 20], 1), ([50, 50, 20, 20], 1), ([10, 60, 20, 20], 2)])
    preds = [
        _pred([10, 10, 20, 20], 1, 0.9),  # TP
        _pred([11, 11, 20, 20], 1, 0.8),  # duplicate of the same box: FP
        _pred([50, 50, 20, 20], 2, 0.9),  # right place, wrong class: FP for class 2 ...
        _pred([10, 60, 20, 20], 2, 0.2),  # would match but is below the threshold: ignored
    ]
    counts = match_counts(gt, preds, score_threshold=0.5, iou_threshold=0.5)
    assert counts[1] == (1, 1, 1)  # ... and the class-1 box there is missed
    assert counts[2] == (0, 1, 1)
    m = evaluate_detections(gt, preds, score_threshold=0.5)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["score"] == pytest.approx(0.5 * m["map_50"] + 0.5 * m["f1"])


def test_f1_prefers_the_best_overlap_and_ignores_crowd():
    gt = _gt([([0, 0, 20, 20], 1), ([12, 0, 20, 20], 1)], crowd=[([60, 60, 30, 30], 1)])
    preds = [_pred([11, 0, 20, 20], 1, 0.9), _pred([1, 0, 20, 20], 1, 0.8), _pred([61, 61, 28, 28], 1, 0.7)]
    assert match_counts(gt, preds, score_threshold=0.5, iou_threshold=0.5)[1] == (2, 0, 0)


def test_no_predictions_gives_zero():
    m = evaluate_detections(_gt([([10, 10, 20, 20], 1)]), [])
    assert (m["map"], m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0, 0.0)
