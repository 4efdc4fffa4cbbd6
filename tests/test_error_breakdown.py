"""The error breakdown on a hand-made image with one error of every kind."""
import pytest

from detector.analysis.error_breakdown import CAUSES, error_breakdown
from detector.metrics import Thresholds

CAT, DOG = 1, 2


def _gt(boxes):
    return {"images": [{"id": i, "width": 400, "height": 400} for i in (1, 2)],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for n, (i, c, b) in enumerate(boxes)],
            "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}]}


def one_of_each():
    gt = _gt([(1, CAT, [0, 0, 40, 40]),  # found, and found again (a duplicate)
              (1, DOG, [100, 100, 40, 40]),  # found as a cat
              (1, CAT, [200, 200, 40, 40]),  # found badly placed (IoU 0.14)
              (1, DOG, [0, 200, 40, 40]),  # only a badly placed cat near it: `both`, and the dog is missed
              (1, CAT, [200, 0, 40, 40]),  # nothing near: missed
              (1, CAT, [100, 0, 40, 40]),  # found, after the errors in score order
              (2, DOG, [50, 50, 40, 40])])  # found
    p = lambda i, c, b, s: {"image_id": i, "category_id": c, "bbox": b, "score": s}
    results = [p(1, CAT, [0, 0, 40, 40], 0.9), p(1, CAT, [2, 2, 40, 40], 0.8), p(1, CAT, [100, 100, 40, 40], 0.85),
               p(1, CAT, [220, 220, 40, 40], 0.7), p(1, CAT, [20, 220, 40, 40], 0.6), p(1, DOG, [320, 320, 30, 30], 0.75),
               p(1, CAT, [100, 0, 40, 40], 0.5), p(2, DOG, [50, 50, 40, 40], 0.95),
               p(2, DOG, [300, 300, 30, 30], 0.1)]  # a background error under the threshold
    return gt, results


def test_each_error_gets_its_one_cause_and_fixing_it_gains_what_it_cost():
    gt, results = one_of_each()
    b = error_breakdown(gt, results, Thresholds(0.3, {}))
    assert b.counts == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 1,
                        "missed": 2}
    assert set(b.gains) == set(CAUSES) and all(g >= -1e-9 for g in b.gains.values())
    for kind in ("classification", "localisation", "duplicate", "missed"):  # each stands before a true positive
        assert b.gains[kind] > 0.001, kind
    assert b.per_image[1]["missed"] == 2 and sum(b.per_image[2].values()) == 0
    assert b.worst(5) == [1]
    assert b.to_dict()["per_image"]["1"]["duplicate"] == 1


def test_per_class_thresholds_decide_what_counts_and_gains_use_every_detection():
    gt, results = one_of_each()
    strict = error_breakdown(gt, results, Thresholds(0.3, {CAT: 0.88}))  # only the first cat detection kept
    assert strict.counts["duplicate"] == strict.counts["classification"] == 0
    assert strict.counts["missed"] == 5  # of the cats only the first is found; the dog behind the cat error too
    assert strict.gains == pytest.approx(error_breakdown(gt, results, Thresholds(0.3, {})).gains)
    everything = error_breakdown(gt, results, Thresholds(0.0, {}))
    assert everything.counts["background"] == 2
