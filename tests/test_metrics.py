import contextlib
import io
import json
import math

import numpy as np
import pytest

from detector.data.coco import load_coco
from detector.metrics import COCO_KEYS, METRIC_KEYS, SIZE_KEYS, Metrics, evaluate_detections, match_counts, pr_curves
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
        assert m.value(key) == pytest.approx(1.0), key
    assert m.per_class["wbc"].ap == pytest.approx(1.0) 
    assert json.dumps(Metrics.from_dict(m.to_dict()).to_dict()) == json.dumps(m.to_dict())  # the file form, whole
    curves = pr_curves(gt, results)
    assert set(curves) == {1, 2} and all((p == 1.0).all() for _, p in curves.values())


def test_equals_pycocotools_on_jittered_rbc(rbc_valid):
    gt = rbc_valid.to_coco()
    results = jittered_predictions(gt)
    ours = evaluate_detections(gt, results).to_dict()
    ref = pycocotools_stats(gt, results)
    assert 0.2 < ours["map"] < 0.9  # a non-trivial case
    assert_equals_pycocotools(ours, ref, {1: "rbc", 2: "wbc"})


def assert_equals_pycocotools(ours, ref, names):
    """All twelve numbers of COCO's summary, and per class AP and AR overall and by size."""
    for i, key in enumerate(COCO_KEYS):
        if ref.stats[i] == -1:  # no ground truth of that size
            assert math.isnan(ours[key]), key
        else:
            assert abs(ours[key] - ref.stats[i]) < 1e-6, key
    precision, recall = ref.eval["precision"], ref.eval["recall"]
    for k, cid in enumerate(ref.params.catIds):
        mine = ours["per_class"][names[cid]]
        for a, suffix in enumerate(("", "_small", "_medium", "_large")):
            p, r = precision[:, :, k, a, -1], recall[:, k, a, -1]
            ap, ar = mine["ap" + suffix], mine["ar_100" if a == 0 else "ar" + suffix]
            assert (math.isnan(ap) and not (p > -1).any()) or abs(ap - p[p > -1].mean()) < 1e-6, (cid, suffix)
            assert (math.isnan(ar) and not (r > -1).any()) or abs(ar - r[r > -1].mean()) < 1e-6, (cid, suffix)


def boxes_of_every_size(seed=0):
    """Hand-made ground truth with small (8-31 px), medium and large (96-200 px) boxes of two classes, and
    predictions near them, some of the wrong class, some far off."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(1, 31):
        images.append({"id": i, "width": 800, "height": 800, "file_name": f"{i}.jpg"})
        for side in (12, 20, 40, 70, 120, 180):
            x, y = rng.uniform(0, 600, 2)
            w, h = side * rng.uniform(0.8, 1.1, 2)
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": 0})
            shift = rng.normal(0, side * 0.15, 2)
            results.append({"image_id": i, "category_id": cat if rng.random() > 0.15 else 3 - cat,
                            "bbox": [x + shift[0], y + shift[1], w, h], "score": float(rng.random())})
            if rng.random() < 0.3:
                results.append({"image_id": i, "category_id": cat, "bbox": [x + side, y, w, h],
                                "score": float(rng.random() * 0.5)})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, results


def test_ap_and_ar_by_size_equal_pycocotools():
    gt, results = boxes_of_every_size()
    ours = evaluate_detections(gt, results).to_dict()
    ref = pycocotools_stats(gt, results)
    assert all(0.05 < ours[k] < 0.95 for k in ("map_small", "map_medium", "map_large", "mar_small", "mar_large"))
    assert_equals_pycocotools(ours, ref, {1: "a", 2: "b"})
    assert set(SIZE_KEYS) <= set(METRIC_KEYS)  # logged every epoch, averaged over folds, in every report


def test_without_predictions_every_size_with_boxes_scores_zero_and_sizes_without_are_nan():
    gt, _ = boxes_of_every_size()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 32 ** 2]  # no small boxes left
    m = evaluate_detections(gt, []).to_dict()
    assert m["map_medium"] == m["map_large"] == m["mar_100"] == 0.0
    assert math.isnan(m["map_small"]) and math.isnan(m["mar_small"])
    assert math.isnan(m["per_class"]["a"]["ap_small"]) and m["per_class"]["a"]["ap_large"] == 0.0


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
    m = json.loads(out.getvalue(), parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    assert {"map", "map_50", "map_75", "precision", "recall", "f1", "per_class"} <= m.keys()
    ref = pycocotools_stats(gt, results)
    assert abs(m["map"] - ref.stats[0]) < 1e-6 and abs(m["map_50"] - ref.stats[1]) < 1e-6
    assert abs(m["map_medium"] - ref.stats[4]) < 1e-6 and abs(m["mar_100"] - ref.stats[8]) < 1e-6
    assert m["per_class"]["wbc"]["ap_small"] is None  # no small white cells: NaN inside, null in --json
    counts = m["confusion"]["counts"]
    assert [sum(counts[i]) for i in (0, 1)] == [m["per_class"][n]["num_gt"] for n in ("rbc", "wbc")]
    assert counts[0][0] + counts[1][1] == round(m["recall"] * sum(c["num_gt"] for c in m["per_class"].values()))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        main(["evaluate", "--predictions", str(path), str(rbc / "valid" / "_annotations.coco.json")])
    assert "AP small" in text.getvalue() and "confusion matrix at the operating point" in text.getvalue()
    assert "where the errors come from" in text.getvalue()
    assert m["errors"]["counts"]["classification"] > 0  # a tenth of the boxes were given the wrong class


def test_predictions_of_another_label_map_are_refused_not_scored_zero(rbc, rbc_valid, tmp_path):
    from detector.errors import DatasetError
    from detector.analysis.evaluate import evaluate_results_file

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
    m = evaluate_detections(gt, preds, score_threshold=0.5).to_dict()
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["score"] == pytest.approx(0.5 * m["map_50"] + 0.5 * m["f1"])


def test_f1_prefers_the_best_overlap_and_ignores_crowd():
    gt = _gt([([0, 0, 20, 20], 1), ([12, 0, 20, 20], 1)], crowd=[([60, 60, 30, 30], 1)])
    preds = [_pred([11, 0, 20, 20], 1, 0.9), _pred([1, 0, 20, 20], 1, 0.8), _pred([61, 61, 28, 28], 1, 0.7)]
    assert match_counts(gt, preds, score_threshold=0.5, iou_threshold=0.5)[1] == (2, 0, 0)


def test_no_predictions_gives_zero():
    m = evaluate_detections(_gt([([10, 10, 20, 20], 1)]), [])
    assert (m.map, m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0, 0.0)
